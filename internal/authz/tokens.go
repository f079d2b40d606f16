package authz

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/peerd-mesh/peerd/internal/xds"
)

// Reasons of a token refusal (the reason label of
// peerd_xds_requests_denied_total).
const (
	ReasonNoToken = "no_token"
	// ReasonMalformedToken: the bearer value is not shaped like a JWT, so
	// it cannot be a service-account token and is refused without asking
	// the API server.
	ReasonMalformedToken    = "malformed_token"
	ReasonInvalidToken      = "invalid_token"
	ReasonNotServiceAccount = "not_service_account"
	ReasonReviewFailed      = "review_failed"
	// ReasonReviewOverloaded: MaxReviews reviews were already in flight;
	// the stream ends with Unavailable and the client retries.
	ReasonReviewOverloaded = "review_overloaded"
)

// MaxTokenBytes is the longest bearer token reviewed. A service-account
// token is about 1 KiB; anything past this is refused as malformed before
// it is decoded.
const MaxTokenBytes = 16 << 10

// Results of one TokenReview (the result label of peerd_token_reviews_total).
const (
	reviewAuthenticated   = "authenticated"
	reviewUnauthenticated = "unauthenticated"
	reviewError           = "error"
)

// DefaultTokenAudience is the audience ztunnel requests its token for, and
// the one istiod checks: ztunnel is configured to talk to its CA and xDS
// server under that name.
const DefaultTokenAudience = "istio-ca"

// TokenReviewer asks whether a bearer token is valid for one of audiences.
// KubeTokenReviewer is the real one; an error means the question could not
// be asked (the API server is down), not that the token is bad.
type TokenReviewer interface {
	ReviewToken(ctx context.Context, token string, audiences []string) (authnv1.TokenReviewStatus, error)
}

// KubeTokenReviewer reviews tokens with the TokenReview API
// (authentication.k8s.io/v1); peerd's service account needs `create` on
// tokenreviews.
type KubeTokenReviewer struct {
	Client kubernetes.Interface
}

// ReviewToken implements TokenReviewer.
func (r KubeTokenReviewer) ReviewToken(ctx context.Context, token string, audiences []string) (authnv1.TokenReviewStatus, error) {
	review, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return authnv1.TokenReviewStatus{}, fmt.Errorf("TokenReview: %w", err)
	}
	return review.Status, nil
}

// TokenOptions configures a TokenAuthenticator. Zero values take the
// defaults in their comments.
type TokenOptions struct {
	// Audiences the token must be valid for (one of); default
	// [DefaultTokenAudience].
	Audiences []string
	// MaxEntries bounds the cache (default 10,000: one per ztunnel, so a
	// node count, with room for token rotation).
	MaxEntries int
	// MaxTTL caps how long an accepted token is trusted without a new
	// review, even when its exp claim is later (default 10 min): a deleted
	// service account loses access within MaxTTL.
	MaxTTL time.Duration
	// NoExpiryTTL is how long an accepted token without an exp claim (a
	// legacy Secret-based token) is trusted (default 1 min).
	NoExpiryTTL time.Duration
	// NegativeTTL is how long a refused token stays refused without a new
	// review (default 5 s): a client that retries a bad token in a loop
	// costs the API server one review per NegativeTTL, not one per try.
	NegativeTTL time.Duration
	// ReviewTimeout bounds one TokenReview call (default 10 s).
	ReviewTimeout time.Duration
	// MaxReviews bounds the TokenReviews in flight (default 64). The TLS
	// listener is reachable through the east-west gateway, so anyone can
	// send tokens, and the cache helps only when a token repeats: without a
	// bound, a flood of distinct well-formed tokens would queue reviews
	// without limit and push real ztunnels' reviews past ReviewTimeout.
	// Past it a new token is refused at once with Unavailable (the client
	// retries with backoff); checks of a token already being reviewed
	// still wait for that review.
	MaxReviews int
	Logger     *zap.Logger
	Registerer prometheus.Registerer
	// now is the clock (tests).
	now func() time.Time
}

func (o TokenOptions) withDefaults() TokenOptions {
	if len(o.Audiences) == 0 {
		o.Audiences = []string{DefaultTokenAudience}
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = 10_000
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = 10 * time.Minute
	}
	if o.NoExpiryTTL <= 0 {
		o.NoExpiryTTL = time.Minute
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = 5 * time.Second
	}
	if o.ReviewTimeout <= 0 {
		o.ReviewTimeout = 10 * time.Second
	}
	if o.MaxReviews <= 0 {
		o.MaxReviews = 64
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.now == nil {
		o.now = time.Now
	}
	return o
}

// TokenAuthenticator checks the service-account token a client sends as
// `authorization: Bearer <token>` gRPC metadata, as ztunnel does. Results
// are cached by the token's SHA-256 (the token itself is never kept or
// logged): an accepted token until its exp claim (capped at MaxTTL), a
// refused one for NegativeTTL; a review that failed is not cached.
// Concurrent checks of one token share one review. A value that is not
// shaped like a JWT is refused without a review, and at most MaxReviews
// reviews run at once.
//
// Concurrency: safe for concurrent use.
type TokenAuthenticator struct {
	reviewer TokenReviewer
	opts     TokenOptions
	// audienceList is opts.Audiences for messages.
	audienceList string
	reviews      *prometheus.CounterVec

	mu    sync.Mutex // guards the maps below
	cache map[tokenKey]cached
	// inflight holds the reviews in progress, one per token: its size is
	// what MaxReviews bounds.
	inflight map[tokenKey]*flight
}

type tokenKey [sha256.Size]byte

// tokenResult is what a review decided: an identity, or a refusal.
type tokenResult struct {
	user   string // system:serviceaccount:<ns>:<sa>
	denial *xds.Denial
}

type cached struct {
	result  tokenResult
	expires time.Time
}

// flight is one review in progress; done is closed once result or err is
// set.
type flight struct {
	done   chan struct{}
	result tokenResult
	err    error
}

// NewTokenAuthenticator returns an authenticator asking r.
func NewTokenAuthenticator(r TokenReviewer, opts TokenOptions) *TokenAuthenticator {
	opts = opts.withDefaults()
	a := &TokenAuthenticator{
		reviewer:     r,
		opts:         opts,
		audienceList: strings.Join(opts.Audiences, ", "),
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerd_token_reviews_total",
			Help: "TokenReview calls made to check ztunnel bearer tokens (cache misses), by result: authenticated, unauthenticated, error (the API could not be asked).",
		}, []string{"result"}),
		cache:    map[tokenKey]cached{},
		inflight: map[tokenKey]*flight{},
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(a.reviews)
		// Both gauges read a map's size under the authenticator's lock.
		locked := func(size func() int) func() float64 {
			return func() float64 {
				a.mu.Lock()
				defer a.mu.Unlock()
				return float64(size())
			}
		}
		opts.Registerer.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "peerd_token_review_cache_entries",
			Help: "Token review results currently cached (accepted and refused tokens).",
		}, locked(func() int { return len(a.cache) })))
		opts.Registerer.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "peerd_token_reviews_in_flight",
			Help: "TokenReview calls in progress; new tokens are refused (reason review_overloaded) while it is at the bound.",
		}, locked(func() int { return len(a.inflight) })))
	}
	return a
}

// Authenticate checks the bearer token in ctx's incoming metadata and
// returns the service account it authenticates
// (system:serviceaccount:<ns>:<sa>), or a *xds.Denial: Unauthenticated for
// a missing, malformed or refused token, Unavailable when the review could
// not be made or MaxReviews are already in flight.
func (a *TokenAuthenticator) Authenticate(ctx context.Context) (string, error) {
	token, denial := a.bearerToken(ctx)
	if denial != nil {
		return "", denial
	}
	// Checked before the cache: junk costs neither a cache entry nor a
	// review, however many distinct values a client sends.
	if _, err := jwtPayload(token); err != nil {
		return "", &xds.Denial{Identity: Anonymous, Reason: ReasonMalformedToken, Code: codes.Unauthenticated,
			Message: fmt.Sprintf("the bearer token is not a JWT (%v): ztunnel must send its service-account token (audience %s)", err, a.audienceList)}
	}
	key := tokenKey(sha256.Sum256([]byte(token)))
	now := a.opts.now()
	a.mu.Lock()
	if c, ok := a.cache[key]; ok && now.Before(c.expires) {
		a.mu.Unlock()
		return c.result.outcome()
	}
	f, ok := a.inflight[key]
	if !ok {
		if len(a.inflight) >= a.opts.MaxReviews {
			a.mu.Unlock()
			return "", &xds.Denial{Identity: Anonymous, Reason: ReasonReviewOverloaded, Code: codes.Unavailable,
				Message: fmt.Sprintf("token reviews saturated (%d in flight), retry", a.opts.MaxReviews)}
		}
		f = &flight{done: make(chan struct{})}
		a.inflight[key] = f
		// The review runs apart from the stream that asked first: if that
		// client leaves, the others waiting for the same token still get
		// their answer.
		go a.review(key, token, f)
	}
	a.mu.Unlock()
	select {
	case <-f.done:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if f.err != nil {
		return "", &xds.Denial{Identity: Anonymous, Reason: ReasonReviewFailed, Code: codes.Unavailable,
			Message: fmt.Sprintf("the bearer token could not be checked, try again: %v", f.err)}
	}
	return f.result.outcome()
}

func (r tokenResult) outcome() (string, error) {
	if r.denial != nil {
		return "", r.denial
	}
	return r.user, nil
}

// bearerToken reads the token from the authorization metadata.
func (a *TokenAuthenticator) bearerToken(ctx context.Context) (string, *xds.Denial) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	if len(values) == 0 {
		return "", &xds.Denial{Identity: Anonymous, Reason: ReasonNoToken, Code: codes.Unauthenticated,
			Message: fmt.Sprintf("no bearer token in the authorization metadata: ztunnel must send its service-account token (audience %s)", a.audienceList)}
	}
	scheme, token, _ := strings.Cut(strings.TrimSpace(values[0]), " ")
	token = strings.TrimSpace(token)
	if !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", &xds.Denial{Identity: Anonymous, Reason: ReasonNoToken, Code: codes.Unauthenticated,
			Message: fmt.Sprintf("the authorization metadata is not \"Bearer <token>\": ztunnel must send its service-account token (audience %s)", a.audienceList)}
	}
	return token, nil
}

// review asks the reviewer about token, caches what it decided, and
// releases the waiters of f.
func (a *TokenAuthenticator) review(key tokenKey, token string, f *flight) {
	ctx, cancel := context.WithTimeout(context.Background(), a.opts.ReviewTimeout)
	defer cancel()
	st, err := a.reviewer.ReviewToken(ctx, token, a.opts.Audiences)
	now := a.opts.now()
	var expires time.Time
	switch {
	case err != nil:
		a.reviews.WithLabelValues(reviewError).Inc()
		f.err = err
	case !st.Authenticated:
		a.reviews.WithLabelValues(reviewUnauthenticated).Inc()
		f.result = tokenResult{denial: a.refused(st.Error)}
		expires = now.Add(a.opts.NegativeTTL)
	default:
		a.reviews.WithLabelValues(reviewAuthenticated).Inc()
		f.result = a.accepted(st)
		if f.result.denial != nil {
			expires = now.Add(a.opts.NegativeTTL)
		} else {
			expires = now.Add(a.positiveTTL(token, now))
			a.opts.Logger.Debug("ztunnel token authenticated", zap.String("user", f.result.user), zap.Time("trusted_until", expires))
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.inflight, key)
	close(f.done)
	if f.err == nil && expires.After(now) {
		a.storeLocked(key, cached{result: f.result, expires: expires}, now)
	}
}

// refused is the denial of a token the API server did not authenticate;
// its error says why (expired, wrong audience, unknown service account).
func (a *TokenAuthenticator) refused(reason string) *xds.Denial {
	if reason == "" {
		reason = "no reason given"
	}
	return &xds.Denial{Identity: Anonymous, Reason: ReasonInvalidToken, Code: codes.Unauthenticated,
		Message: fmt.Sprintf("the bearer token was refused by the Kubernetes TokenReview API for audience %s: %s", a.audienceList, truncate(reason, 512))}
}

// accepted checks what an authenticated review says: the token must be a
// service account's and valid for one of our audiences. An API server
// whose authenticator ignores audiences returns none; a token it accepts
// may be meant for someone else, so it is refused.
func (a *TokenAuthenticator) accepted(st authnv1.TokenReviewStatus) tokenResult {
	user := st.User.Username
	if !IsServiceAccountUser(user) {
		return tokenResult{denial: &xds.Denial{Identity: Other, Reason: ReasonNotServiceAccount, Code: codes.Unauthenticated,
			Message: fmt.Sprintf("the bearer token authenticates %q, which is not a service account (system:serviceaccount:<namespace>:<name>)", truncate(user, 256))}}
	}
	for _, aud := range st.Audiences {
		for _, want := range a.opts.Audiences {
			if aud == want {
				return tokenResult{user: user}
			}
		}
	}
	return tokenResult{denial: &xds.Denial{Identity: Anonymous, Reason: ReasonInvalidToken, Code: codes.Unauthenticated,
		Message: fmt.Sprintf("the TokenReview of the bearer token (%s) confirmed audiences %v, none of %s", user, st.Audiences, a.audienceList)}}
}

// IsServiceAccountUser reports whether a Kubernetes username is a service
// account's: system:serviceaccount:<namespace>:<name>.
func IsServiceAccountUser(user string) bool {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return false
	}
	ns, name, ok := strings.Cut(rest, ":")
	return ok && ns != "" && name != "" && !strings.Contains(name, ":")
}

// positiveTTL is how long an accepted token is trusted: until its exp
// claim, at most MaxTTL; NoExpiryTTL without a readable exp. The payload
// is read without checking the signature: the API server has just
// verified the token, and the claim only shortens the time it is trusted.
func (a *TokenAuthenticator) positiveTTL(token string, now time.Time) time.Duration {
	exp, ok := jwtExpiry(token)
	if !ok {
		return min(a.opts.NoExpiryTTL, a.opts.MaxTTL)
	}
	return min(exp.Sub(now), a.opts.MaxTTL)
}

// jwtPayload returns the decoded payload of a compact JWT
// (header.payload.signature, each part base64url, header and payload JSON
// objects), or what is wrong with its shape. Nothing is verified: this only
// tells a token the API server could accept from junk, and the error never
// quotes the token.
func jwtPayload(token string) ([]byte, error) {
	if len(token) > MaxTokenBytes {
		return nil, fmt.Errorf("%d bytes, over %d", len(token), MaxTokenBytes)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%d dot-separated parts, want 3", len(parts))
	}
	var decoded [3][]byte
	for i, name := range []string{"header", "payload", "signature"} {
		if parts[i] == "" {
			return nil, fmt.Errorf("empty %s", name)
		}
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[i], "="))
		if err != nil {
			return nil, fmt.Errorf("%s is not base64url", name)
		}
		decoded[i] = b
	}
	for i, name := range []string{"header", "payload"} {
		// Unmarshalling into a struct fails for anything but an object.
		var object struct{}
		if err := json.Unmarshal(decoded[i], &object); err != nil {
			return nil, fmt.Errorf("%s is not a JSON object", name)
		}
	}
	return decoded[1], nil
}

// jwtExpiry returns the exp claim of a JWT's payload.
func jwtExpiry(token string) (time.Time, bool) {
	payload, err := jwtPayload(token)
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == "" {
		return time.Time{}, false
	}
	secs, err := strconv.ParseFloat(string(claims.Exp), 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(int64(secs), 0), true
}

// storeLocked caches c, making room first: expired entries go, and if the
// cache is still full, arbitrary ones (map order) until one fits. Evicting
// only costs a later review. Must be called under a.mu.
func (a *TokenAuthenticator) storeLocked(key tokenKey, c cached, now time.Time) {
	if _, ok := a.cache[key]; !ok && len(a.cache) >= a.opts.MaxEntries {
		for k, e := range a.cache {
			if !now.Before(e.expires) {
				delete(a.cache, k)
			}
		}
		for k := range a.cache {
			if len(a.cache) < a.opts.MaxEntries {
				break
			}
			delete(a.cache, k)
		}
	}
	a.cache[key] = c
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
