-- expire_claims: forget the claims and chunk tokens past their time (on Redis's
-- clock). admit.lua treats an expired claim as free whether or not it is still
-- there, so this is only housekeeping, run by every worker's heartbeat sweep
-- rather than by each admission. Returns how many claims went.
--! KEYS claims claim_tokens
--! include lib/decimal.lua
--! include lib/now.lua
--! include lib/claims.lua
return claims_expire(claims, claim_tokens, now())
