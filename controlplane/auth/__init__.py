"""Who is calling: bearer tokens of people and automation, and agent credentials."""
