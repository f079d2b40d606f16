package authz

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
		{"payload not JSON → NoExpiryTTL", `not json`, time.Minute},
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
	e.rev.answers["bad"] = authnv1.TokenReviewStatus{Error: "[invalid bearer token, token audiences [\"other\"] is invalid for the target audiences [\"istio-ca\"]]"}
	for range 100 {
		_, reason, code := e.check(t, "bad")
		if reason != ReasonInvalidToken || code != codes.Unauthenticated {
			t.Fatalf("got %q %v, want %s Unauthenticated", reason, code, ReasonInvalidToken)
		}
	}
	if n := e.rev.callsOf("bad"); n != 1 {
		t.Fatalf("%d reviews for 100 tries within NegativeTTL, want 1", n)
	}
	_, err := e.auth.Authenticate(withAuthorization("Bearer bad"))
	if !strings.Contains(err.Error(), "is invalid for the target audiences") {
		t.Errorf("message does not carry the API server's reason: %v", err)
	}
	e.advance(5 * time.Second)
	e.check(t, "bad")
	if n := e.rev.callsOf("bad"); n != 2 {
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
		_, reason, code := e.check(t, "tok")
		if reason != ReasonReviewFailed || code != codes.Unavailable {
			t.Fatalf("got %q %v, want %s Unavailable", reason, code, ReasonReviewFailed)
		}
		if n := e.rev.callsOf("tok"); n != i {
			t.Fatalf("after %d checks, %d reviews: a failed review was cached", i, n)
		}
	}
	e.rev.mu.Lock()
	e.rev.err = nil
	e.rev.answers["tok"] = serviceAccount("system:serviceaccount:ns:sa", "istio-ca")
	e.rev.mu.Unlock()
	if user, reason, _ := e.check(t, "tok"); user == "" {
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
			e.rev.answers["tok"] = tc.status
			if _, reason, code := e.check(t, "tok"); reason != tc.reason || code != codes.Unauthenticated {
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
	e.rev.answers["tok"] = serviceAccount("system:serviceaccount:ns:sa", "istio-ca")
	release := make(chan struct{})
	e.rev.block["tok"] = release

	const n = 20
	var waiting atomic.Int32
	users := make(chan string, n)
	for range n {
		go func() {
			u, _ := e.auth.Authenticate(countingDone{withAuthorization("Bearer tok"), &waiting})
			users <- u
		}()
	}
	leaver, leave := context.WithCancel(withAuthorization("Bearer tok"))
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
	if c := e.rev.callsOf("tok"); c != 1 {
		t.Fatalf("%d reviews in flight for one token, want 1", c)
	}
	close(release)
	for range n {
		if u := <-users; u != "system:serviceaccount:ns:sa" {
			t.Fatalf("a waiting check got %q", u)
		}
	}
	if c := e.rev.callsOf("tok"); c != 1 {
		t.Fatalf("%d reviews, want 1", c)
	}
}

func TestTokenCacheIsBounded(t *testing.T) {
	e := newTokenEnv(t, TokenOptions{MaxEntries: 3})
	for i := range 10 {
		tok := fmt.Sprintf("tok-%d", i)
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
	e.check(t, "tok-9")
	if n := e.rev.callsOf("tok-9"); n != 1 {
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
