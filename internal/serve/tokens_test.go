package serve

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/peerd-mesh/peerd/internal/discovery"
)

// TestZtunnelAuthenticationByMode: Kubernetes mode reviews tokens on the TLS
// listener; file mode cannot, and says so at start-up and on /readyz; the
// plaintext listener is announced as unauthenticated in both.
func TestZtunnelAuthenticationByMode(t *testing.T) {
	tests := []struct {
		name         string
		configDir    string
		listen       string
		plaintext    string
		wantTokens   bool
		wantGap      bool
		wantWarnings []string
	}{
		{"kubernetes, TLS", "", ":15012", "", true, false, nil},
		{"kubernetes, TLS and plaintext", "", ":15012", "127.0.0.1:15010", true, false, []string{"--plaintext-listen is unauthenticated"}},
		{"file mode, TLS", "/etc/peerd", ":15012", "", false, true, []string{"no ztunnel authentication on --listen in file mode"}},
		{"kubernetes, plaintext only", "", "", "127.0.0.1:15010", false, false, []string{"--plaintext-listen is unauthenticated"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := DefaultOptions()
			opts.ConfigDir, opts.Listen, opts.PlaintextListen = tc.configDir, tc.listen, tc.plaintext
			// Building the client connects to nothing.
			var kubeCfg *rest.Config
			if tc.configDir == "" {
				kubeCfg = &rest.Config{Host: "https://127.0.0.1:6443"}
			}
			core, logs := observer.New(zap.WarnLevel)
			reg := prometheus.NewRegistry()
			st := newStatus(discovery.NewIndex(), reg)
			tokens, err := ztunnelAuthentication(opts, kubeCfg, st, zap.New(core), reg)
			if err != nil {
				t.Fatal(err)
			}
			if got := tokens != nil; got != tc.wantTokens {
				t.Errorf("token authenticator built = %v, want %v", got, tc.wantTokens)
			}
			if got := st.clientAuthMissing.Load(); got != tc.wantGap {
				t.Errorf("/readyz reports missing client authentication = %v, want %v", got, tc.wantGap)
			}
			var warned []string
			for _, e := range logs.All() {
				warned = append(warned, e.Message)
			}
			if len(warned) != len(tc.wantWarnings) {
				t.Fatalf("warnings %q, want %d", warned, len(tc.wantWarnings))
			}
			for i, w := range tc.wantWarnings {
				if !strings.Contains(warned[i], w) {
					t.Errorf("warning %q, want one containing %q", warned[i], w)
				}
			}
		})
	}
}

// TestTokenReviewClientHasItsOwnRateLimit: the TokenReview client neither
// shares client-go's default 5 QPS with the informers and status writes nor
// changes their config.
func TestTokenReviewClientHasItsOwnRateLimit(t *testing.T) {
	shared := &rest.Config{Host: "https://127.0.0.1:6443"}
	client, err := tokenReviewClient(shared)
	if err != nil {
		t.Fatal(err)
	}
	rc, ok := client.(*kubernetes.Clientset).AuthenticationV1().RESTClient().(*rest.RESTClient)
	if !ok {
		t.Fatalf("TokenReview REST client is a %T", client.(*kubernetes.Clientset).AuthenticationV1().RESTClient())
	}
	if qps := rc.GetRateLimiter().QPS(); qps != tokenReviewQPS {
		t.Errorf("TokenReview client QPS = %v, want %v", qps, tokenReviewQPS)
	}
	if shared.QPS != 0 || shared.Burst != 0 {
		t.Errorf("the shared config was changed to QPS %v, burst %d", shared.QPS, shared.Burst)
	}
}
