"""Bearer-JWT authentication (AUTH_MODE=jwt): the signing keys (a JWKS kept fresh in the
background) and the verifier that turns an `Authorization` value into a Principal."""
