package authz

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	authnv1 "k8s.io/api/authentication/v1"

	"github.com/peerd-mesh/peerd/internal/xds"
)

// fakeReviewer answers from a table by token and counts the calls; a
// review of a token in block waits until the channel is closed.
type fakeReviewer struct {
	mu      sync.Mutex
	answers map[string]authnv1.TokenReviewStatus
	err     error
	block   map[string]chan struct{}
	calls   map[string]int
}

func (f *fakeReviewer) ReviewToken(ctx context.Context, token string, audiences []string) (authnv1.TokenReviewStatus, error) {
	f.mu.Lock()
	f.calls[token]++
	wait := f.block[token]
	st, err := f.answers[token], f.err
	f.mu.Unlock()
	if wait != nil {
		select {
		case <-wait:
		case <-ctx.Done():
			return authnv1.TokenReviewStatus{}, ctx.Err()
		}
	}
	if err != nil {
		return authnv1.TokenReviewStatus{}, err
	}
	if len(audiences) != 1 || audiences[0] != DefaultTokenAudience {
		return authnv1.TokenReviewStatus{}, fmt.Errorf("asked for audiences %v", audiences)
	}
	return st, nil
}

func (f *fakeReviewer) callsOf(token string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[token]
}

// jwt is an unsigned token whose payload is claims: enough for the expiry
// parsing, which never checks signatures.
func jwt(claims string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none"}`)) + "." + enc([]byte(claims)) + ".sig"
}

// tok and bad are well-formed tokens that only the fake reviewer's table
// tells apart.
var (
	tok = jwt(`{"sub":"system:serviceaccount:ns:sa"}`)
	bad = jwt(`{"sub":"bad"}`)
)

func serviceAccount(user string, audiences ...string) authnv1.TokenReviewStatus {
	return authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: user}, Audiences: audiences}
}

// tokenEnv is an authenticator over a fake reviewer and a settable clock.
type tokenEnv struct {
	rev  *fakeReviewer
	auth *TokenAuthenticator
	mu   sync.Mutex
	now  time.Time
}

var epoch = time.Unix(1_800_000_000, 0)

func newTokenEnv(t *testing.T, opts TokenOptions) *tokenEnv {
	t.Helper()
	e := &tokenEnv{
		rev: &fakeReviewer{answers: map[string]authnv1.TokenReviewStatus{}, block: map[string]chan struct{}{}, calls: map[string]int{}},
		now: epoch,
	}
	opts.now = func() time.Time { e.mu.Lock(); defer e.mu.Unlock(); return e.now }
	e.auth = NewTokenAuthenticator(e.rev, opts)
	return e
}

func (e *tokenEnv) advance(d time.Duration) { e.mu.Lock(); e.now = e.now.Add(d); e.mu.Unlock() }

func withAuthorization(value string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", value))
}

// check authenticates token and returns the user, or the denial's reason
// and code.
func (e *tokenEnv) check(t *testing.T, token string) (user, reason string, code codes.Code) {
	t.Helper()
	user, err := e.auth.Authenticate(withAuthorization("Bearer " + token))
	return outcome(t, user, err)
}

func outcome(t *testing.T, user string, err error) (string, string, codes.Code) {
	t.Helper()
	if err == nil {
		return user, "", codes.OK
	}
	var d *xds.Denial
	if !errors.As(err, &d) {
		t.Fatalf("Authenticate returned %v, not a *xds.Denial", err)
	}
	return "", d.Reason, d.Code
}

func TestTokenMissingOrMalformedIsRefusedWithoutReview(t *testing.T) {
	e := newTokenEnv(t, TokenOptions{})
	for name, ctx := range map[string]context.Context{
		"no metadata":        context.Background(),
		"no authorization":   metadata.NewIncomingContext(context.Background(), metadata.Pairs("clusterid", "c1")),
		"basic auth":         withAuthorization("Basic dXNlcjpwYXNz"),
		"bearer, no token":   withAuthorization("Bearer "),
		"token, no scheme":   withAuthorization("eyJhbGciOi"),
		"empty":              withAuthorization(""),
		"lowercase no token": withAuthorization("bearer"),
	} {
		t.Run(name, func(t *testing.T) {
			user, err := e.auth.Authenticate(ctx)
			_, reason, code := outcome(t, user, err)
			if reason != ReasonNoToken || code != codes.Unauthenticated {
				t.Fatalf("got reason %q code %v, want %s Unauthenticated", reason, code, ReasonNoToken)
			}
			if !strings.Contains(err.Error(), "ztunnel must send its service-account token (audience istio-ca)") {
				t.Errorf("message does not tell what to send: %v", err)
			}
		})
	}
	if got := testutil.CollectAndCount(e.auth.reviews); got != 0 {
		t.Errorf("%d review results counted for tokens never sent to the API", got)
	}
}

// TestTokenAcceptedUntilExpiry: an accepted token is trusted from the cache
// until its exp claim, then reviewed again.
func TestTokenAcceptedUntilExpiry(t *testing.T) {
	e := newTokenEnv(t, TokenOptions{})
	tok := jwt(fmt.Sprintf(`{"sub":"system:serviceaccount:istio-system:ztunnel","exp":%d}`, epoch.Add(3*time.Minute).Unix()))
	e.rev.answers[tok] = serviceAccount("system:serviceaccount:istio-system:ztunnel", "istio-ca")
	for range 5 {
		if user, reason, _ := e.check(t, tok); user != "system:serviceaccount:istio-system:ztunnel" {
			t.Fatalf("refused (%s), want accepted", reason)
		}
	}
	if n := e.rev.callsOf(tok); n != 1 {
		t.Fatalf("%d reviews for 5 checks within the token's lifetime, want 1", n)
	}
	e.advance(3*time.Minute - time.Second)
	e.check(t, tok)
	if n := e.rev.callsOf(tok); n != 1 {
		t.Fatalf("reviewed again before exp (%d reviews)", n)
	}
	e.advance(time.Second)
	e.check(t, tok)
	if n := e.rev.callsOf(tok); n != 2 {
		t.Fatalf("%d reviews after exp, want 2", n)
	}
	if got := testutil.ToFloat64(e.auth.reviews.WithLabelValues("authenticated")); got != 2 {
		t.Errorf("peerd_token_reviews_total{result=authenticated} = %v, want 2", got)
	}
}

// TestTokenTrustIsCapped: a far exp, or none, does not make a token
// trusted for longer than MaxTTL or NoExpiryTTL: a deleted service account
// loses access within that time.
func TestTokenTrustIsCapped(t *testing.T) {
	tests := []struct {
		name   string
		claims string
		ttl    time.Duration
	}{
		{"exp a year away → MaxTTL", fmt.Sprintf(`{"exp":%d}`, epoch.Add(365*24*time.Hour).Unix()), 10 * time.Minute},
		{"no exp → NoExpiryTTL", `{"sub":"x"}`, time.Minute},
		{"exp not a number → NoExpiryTTL", `{"exp":"soon"}`, time.Minute},
		{"exp as a float", fmt.Sprintf(`{"exp":%d.5}`, epoch.Add(2*time.Minute).Unix()), 2 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTokenEnv(t, TokenOptions{})
			tok := jwt(tc.claims)
			e.rev.answers[tok] = serviceAccount("system:serviceaccount:ns:sa", "istio-ca")
			e.check(t, tok)
			e.advance(tc.ttl - time.Second)
			e.check(t, tok)
			if n := e.rev.callsOf(tok); n != 1 {
				t.Fatalf("reviewed again before %v (%d reviews)", tc.ttl, n)
			}
			e.advance(time.Second)
			e.check(t, tok)
			if n := e.rev.callsOf(tok); n != 2 {
				t.Fatalf("not reviewed again after %v (%d reviews)", tc.ttl, n)
			}
		})
	}
}

// TestTokenRefusedIsCachedBriefly: a client flooding a bad token costs the
// API server one review per NegativeTTL.
func TestTokenRefusedIsCachedBriefly(t *testing.T) {
	e := newTokenEnv(t, TokenOptions{NegativeTTL: 5 * time.Second})
	e.rev.answers[bad] = authnv1.TokenReviewStatus{Error: "[invalid bearer token, token audiences [\"other\"] is invalid for the target audiences [\"istio-ca\"]]"}
	for range 100 {
		_, reason, code := e.check(t, bad)
		if reason != ReasonInvalidToken || code != codes.Unauthenticated {
			t.Fatalf("got %q %v, want %s Unauthenticated", reason, code, ReasonInvalidToken)
		}
	}
	if n := e.rev.callsOf(bad); n != 1 {
		t.Fatalf("%d reviews for 100 tries within NegativeTTL, want 1", n)
	}
	_, err := e.auth.Authenticate(withAuthorization("Bearer " + bad))
	if !strings.Contains(err.Error(), "is invalid for the target audiences") {
		t.Errorf("message does not carry the API server's reason: %v", err)
	}
	e.advance(5 * time.Second)
	e.check(t, bad)
	if n := e.rev.callsOf(bad); n != 2 {
		t.Fatalf("%d reviews after NegativeTTL, want 2", n)
	}
	if got := testutil.ToFloat64(e.auth.reviews.WithLabelValues("unauthenticated")); got != 2 {
		t.Errorf("peerd_token_reviews_total{result=unauthenticated} = %v, want 2", got)
	}
}

// TestTokenReviewErrorIsUnavailableAndNotCached: an API server that cannot
// be asked is not a verdict on the token.
func TestTokenReviewErrorIsUnavailableAndNotCached(t *testing.T) {
	e := newTokenEnv(t, TokenOptions{})
	e.rev.err = errors.New("connection refused")
	for i := 1; i <= 3; i++ {
		_, reason, code := e.check(t, tok)
		if reason != ReasonReviewFailed || code != codes.Unavailable {
			t.Fatalf("got %q %v, want %s Unavailable", reason, code, ReasonReviewFailed)
		}
		if n := e.rev.callsOf(tok); n != i {
			t.Fatalf("after %d checks, %d reviews: a failed review was cached", i, n)
		}
	}
	e.rev.mu.Lock()
	e.rev.err = nil
	e.rev.answers[tok] = serviceAccount("system:serviceaccount:ns:sa", "istio-ca")
	e.rev.mu.Unlock()
	if user, reason, _ := e.check(t, tok); user == "" {
		t.Fatalf("refused (%s) once the API server answers", reason)
	}
	if got := testutil.ToFloat64(e.auth.reviews.WithLabelValues("error")); got != 3 {
		t.Errorf("peerd_token_reviews_total{result=error} = %v, want 3", got)
	}
}

func TestTokenAuthenticatedButNotAcceptable(t *testing.T) {
	tests := []struct {
		name   string
		status authnv1.TokenReviewStatus
		reason string
	}{
		{"a user, not a service account", serviceAccount("alice", "istio-ca"), ReasonNotServiceAccount},
		{"a node", serviceAccount("system:node:n1", "istio-ca"), ReasonNotServiceAccount},
		{"audiences not confirmed", serviceAccount("system:serviceaccount:ns:sa"), ReasonInvalidToken},
		{"another audience confirmed", serviceAccount("system:serviceaccount:ns:sa", "api"), ReasonInvalidToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTokenEnv(t, TokenOptions{})
			e.rev.answers[tok] = tc.status
			if _, reason, code := e.check(t, tok); reason != tc.reason || code != codes.Unauthenticated {
				t.Fatalf("got %q %v, want %s Unauthenticated", reason, code, tc.reason)
			}
		})
	}
}

// countingDone is a context whose Done calls are counted: a check waiting
// for a review in progress has called it.
type countingDone struct {
	context.Context
	calls *atomic.Int32
}

func (c countingDone) Done() <-chan struct{} { c.calls.Add(1); return c.Context.Done() }

// TestConcurrentChecksShareOneReview: many streams arriving at once with
// the same token (ztunnels reconnecting after a restart) cost one review,
// and a waiter that leaves does not cancel it for the others.
func TestConcurrentChecksShareOneReview(t *testing.T) {
	e := newTokenEnv(t, TokenOptions{})
	e.rev.answers[tok] = serviceAccount("system:serviceaccount:ns:sa", "istio-ca")
	release := make(chan struct{})
	e.rev.block[tok] = release

	const n = 20
	var waiting atomic.Int32
	users := make(chan string, n)
	for range n {
		go func() {
			u, _ := e.auth.Authenticate(countingDone{withAuthorization("Bearer " + tok), &waiting})
			users <- u
		}()
	}
	leaver, leave := context.WithCancel(withAuthorization("Bearer " + tok))
	left := make(chan error, 1)
	go func() { _, err := e.auth.Authenticate(leaver); left <- err }()
	deadline := time.After(10 * time.Second)
	for waiting.Load() < n {
		select {
		case <-deadline:
			t.Fatalf("only %d of %d checks are waiting", waiting.Load(), n)
		case <-time.After(time.Millisecond):
		}
	}
	leave()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Fatalf("a check whose stream ended returned %v", err)
	}
	if c := e.rev.callsOf(tok); c != 1 {
		t.Fatalf("%d reviews in flight for one token, want 1", c)
	}
	close(release)
	for range n {
		if u := <-users; u != "system:serviceaccount:ns:sa" {
			t.Fatalf("a waiting check got %q", u)
		}
	}
	if c := e.rev.callsOf(tok); c != 1 {
		t.Fatalf("%d reviews, want 1", c)
	}
}

func TestTokenCacheIsBounded(t *testing.T) {
	e := newTokenEnv(t, TokenOptions{MaxEntries: 3})
	for i := range 10 {
		tok := jwt(fmt.Sprintf(`{"n":%d}`, i))
		e.rev.answers[tok] = serviceAccount("system:serviceaccount:ns:sa", "istio-ca")
		e.check(t, tok)
		e.auth.mu.Lock()
		size := len(e.auth.cache)
		e.auth.mu.Unlock()
		if size > 3 {
			t.Fatalf("after %d tokens the cache holds %d entries, want at most 3", i+1, size)
		}
	}
	// The latest token is always kept.
	last := jwt(`{"n":9}`)
	e.check(t, last)
	if n := e.rev.callsOf(last); n != 1 {
		t.Errorf("the token stored last was evicted (%d reviews)", n)
	}
}

func TestIsServiceAccountUser(t *testing.T) {
	for user, want := range map[string]bool{
		"system:serviceaccount:istio-system:ztunnel": true,
		"system:serviceaccount:istio-system":         false,
		"system:serviceaccount::ztunnel":             false,
		"system:serviceaccount:ns:":                  false,
		"system:serviceaccount:ns:a:b":               false,
		"system:node:n1":                             false,
		"":                                           false,
	} {
		if got := IsServiceAccountUser(user); got != want {
			t.Errorf("IsServiceAccountUser(%q) = %v, want %v", user, got, want)
		}
	}
}

// TestTokenNotAJWTIsRefusedWithoutReview: the TLS listener is reachable
// through the east-west gateway; a value that cannot be a service-account
// token costs no review and no cache entry, however many distinct ones a
// client sends.
func TestTokenNotAJWTIsRefusedWithoutReview(t *testing.T) {
	e := newTokenEnv(t, TokenOptions{})
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	header, payload := enc(`{"alg":"RS256"}`), enc(`{"sub":"x"}`)
	for name, token := range map[string]string{
		"no dots":                 "not-a-token",
		"two parts":               header + "." + payload,
		"four parts":              jwt(`{}`) + ".sig",
		"empty header":            "." + payload + ".sig",
		"empty signature":         header + "." + payload + ".",
		"header not base64url":    "ey!J." + payload + ".sig",
		"payload not base64url":   header + ".e30+/.sig",
		"signature not base64url": header + "." + payload + ".s*g",
		"header not JSON":         enc("RS256") + "." + payload + ".sig",
		"payload not JSON":        jwt(`not json`),
		"payload a JSON array":    jwt(`["system:serviceaccount:ns:sa"]`),
		"payload a JSON string":   jwt(`"system:serviceaccount:ns:sa"`),
		"over MaxTokenBytes":      jwt(`{"pad":"` + strings.Repeat("a", MaxTokenBytes) + `"}`),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := e.auth.Authenticate(withAuthorization("Bearer " + token))
			if _, reason, code := outcome(t, "", err); reason != ReasonMalformedToken || code != codes.Unauthenticated {
				t.Fatalf("got %q %v, want %s Unauthenticated", reason, code, ReasonMalformedToken)
			}
			if msg := err.Error(); !strings.Contains(msg, "is not a JWT") || !strings.Contains(msg, "audience istio-ca") || strings.Contains(msg, token) {
				t.Errorf("message %q should say what is wrong and what to send, without quoting the token", msg)
			}
		})
	}
	const n = 1000
	for i := range n {
		for _, junk := range []string{fmt.Sprintf("junk-%d", i), header + "." + enc(fmt.Sprintf("junk %d", i)) + ".sig"} {
			if _, reason, _ := e.check(t, junk); reason != ReasonMalformedToken {
				t.Fatalf("junk token %d refused with %q, want %s", i, reason, ReasonMalformedToken)
			}
		}
	}
	if calls := e.rev.totalCalls(); calls != 0 {
		t.Errorf("%d TokenReviews for tokens that are not JWTs, want 0", calls)
	}
	if got := testutil.CollectAndCount(e.auth.reviews); got != 0 {
		t.Errorf("%d review results counted for tokens never sent to the API", got)
	}
	e.auth.mu.Lock()
	defer e.auth.mu.Unlock()
	if len(e.auth.cache) != 0 {
		t.Errorf("%d cache entries for tokens that are not JWTs, want 0", len(e.auth.cache))
	}
}

func (f *fakeReviewer) totalCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	total := 0
	for _, n := range f.calls {
		total += n
	}
	return total
}

// hangingReviewer refuses every token once release is closed, and records
// how many reviews ran at once.
type hangingReviewer struct {
	release chan struct{}

	mu                   sync.Mutex
	calls, running, peak int
}

func (r *hangingReviewer) ReviewToken(ctx context.Context, _ string, _ []string) (authnv1.TokenReviewStatus, error) {
	r.mu.Lock()
	r.calls++
	r.running++
	r.peak = max(r.peak, r.running)
	r.mu.Unlock()
	defer func() { r.mu.Lock(); r.running--; r.mu.Unlock() }()
	select {
	case <-r.release:
		return authnv1.TokenReviewStatus{Error: "invalid bearer token"}, nil
	case <-ctx.Done():
		return authnv1.TokenReviewStatus{}, ctx.Err()
	}
}

func (r *hangingReviewer) counts() (calls, peak int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls, r.peak
}

// checkResult is a check's outcome, for checks run in goroutines (which
// must not call t.Fatal).
type checkResult struct {
	reason string
	code   codes.Code
}

func checkAsync(a *TokenAuthenticator, ctx context.Context, results chan<- checkResult) {
	_, err := a.Authenticate(ctx)
	var d *xds.Denial
	switch {
	case err == nil:
		results <- checkResult{code: codes.OK}
	case errors.As(err, &d):
		results <- checkResult{d.Reason, d.Code}
	default:
		results <- checkResult{reason: "not a denial: " + err.Error(), code: codes.Unknown}
	}
}

// waitUntil polls cond; the deadline only bounds a failing test.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(time.Millisecond):
		}
	}
}

// TestTokenReviewsInFlightAreCapped: a flood of distinct well-formed tokens
// (forged, so each needs its own review) starts at most MaxReviews reviews;
// the rest are refused with Unavailable while those still hang, and a
// token already under review is still waited for, not refused.
func TestTokenReviewsInFlightAreCapped(t *testing.T) {
	const maxReviews, n = 8, 200
	rev := &hangingReviewer{release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	// ReviewTimeout far away: only release ends a review, so a refusal
	// that arrives before it did not wait for one.
	a := NewTokenAuthenticator(rev, TokenOptions{MaxReviews: maxReviews, ReviewTimeout: time.Hour, Registerer: reg})
	tokens := make([]string, n)
	results := make(chan checkResult, n)
	for i := range n {
		tokens[i] = jwt(fmt.Sprintf(`{"sub":"forged-%d"}`, i))
		go checkAsync(a, withAuthorization("Bearer "+tokens[i]), results)
	}
	for i := range n - maxReviews {
		select {
		case r := <-results:
			if r.reason != ReasonReviewOverloaded || r.code != codes.Unavailable {
				t.Fatalf("a check past the bound got %q %v, want %s Unavailable", r.reason, r.code, ReasonReviewOverloaded)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d checks past the bound were refused while the admitted reviews hang", i, n-maxReviews)
		}
	}
	waitUntil(t, fmt.Sprintf("%d reviews to start", maxReviews), func() bool { calls, _ := rev.counts(); return calls >= maxReviews })
	if calls, peak := rev.counts(); calls != maxReviews || peak > maxReviews {
		t.Fatalf("%d reviews started, at most %d at once; want %d, at most %d", calls, peak, maxReviews, maxReviews)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(`
# HELP peerd_token_reviews_in_flight TokenReview calls in progress; new tokens are refused (reason review_overloaded) while it is at the bound.
# TYPE peerd_token_reviews_in_flight gauge
peerd_token_reviews_in_flight %d
`, maxReviews)), "peerd_token_reviews_in_flight"); err != nil {
		t.Error(err)
	}

	// A token whose review is in flight joins it, even at the bound.
	var waiting atomic.Int32
	joined := make(chan checkResult, 1)
	var admitted string
	a.mu.Lock()
	for _, tok := range tokens {
		if _, ok := a.inflight[tokenKey(sha256.Sum256([]byte(tok)))]; ok {
			admitted = tok
			break
		}
	}
	a.mu.Unlock()
	if admitted == "" {
		t.Fatal("no token is under review")
	}
	go checkAsync(a, countingDone{withAuthorization("Bearer " + admitted), &waiting}, joined)
	waitUntil(t, "the check of a token under review to wait for it", func() bool { return waiting.Load() > 0 })

	close(rev.release)
	for range maxReviews {
		if r := <-results; r.reason != ReasonInvalidToken || r.code != codes.Unauthenticated {
			t.Fatalf("an admitted check got %q %v, want the review's verdict", r.reason, r.code)
		}
	}
	if r := <-joined; r.reason != ReasonInvalidToken {
		t.Fatalf("the check that joined a review got %q %v, want the review's verdict", r.reason, r.code)
	}
	// The slots are free again.
	fresh := jwt(`{"sub":"fresh"}`)
	checkAsync(a, withAuthorization("Bearer "+fresh), results)
	if r := <-results; r.reason != ReasonInvalidToken {
		t.Fatalf("a new token after the reviews ended got %q %v, want it reviewed", r.reason, r.code)
	}
	if calls, _ := rev.counts(); calls != maxReviews+1 {
		t.Errorf("%d reviews, want %d (the joined check must not start one)", calls, maxReviews+1)
	}
}

func TestMaxReviewsDefault(t *testing.T) {
	if got := (TokenOptions{}).withDefaults().MaxReviews; got != 64 {
		t.Errorf("default MaxReviews = %d, want 64", got)
	}
}
