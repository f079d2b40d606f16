package authz

// FakeJWT is jwt for the external tests: a token shaped like a JWT, so it
// reaches the reviewer.
var FakeJWT = jwt
