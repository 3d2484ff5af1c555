"""Who is asking and how much of the decoder they get: API keys and tenants, the replica-wide count of
open decoder requests (429s), and the fair share of the decoder between keys.

Depends on no other group of the frontend. Other groups import from this package only."""
from frontend.tenancy.admission import SharedAdmission
from frontend.tenancy.fair_share import FairShareGate, OverShare
from frontend.tenancy.tenants import (KEY_ID, OPEN, ROUTER_KEY_ID, KeyRing, KeysInvalid, Tenant, cache_salt,
                                      hash_secret, parse_keys, parse_share_groups)

__all__ = ["KEY_ID", "OPEN", "ROUTER_KEY_ID", "FairShareGate", "KeyRing", "KeysInvalid", "OverShare",
           "SharedAdmission", "Tenant", "cache_salt", "hash_secret", "parse_keys", "parse_share_groups"]
