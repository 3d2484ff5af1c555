"""Who is asking and how much of the decoder they get: API keys and tenants, the replica-wide count of
open decoder requests (429s), and the fair share of the decoder between keys."""
