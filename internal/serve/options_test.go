package serve

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	valid := DefaultOptions()
	valid.ClusterName = "c1"
	valid.CADir = "/etc/cacerts"

	tests := []struct {
		name   string
		mutate func(*Options)
		want   string // "" = valid; otherwise a fragment of the error
	}{
		{"defaults with a cluster name and a ca-dir", func(*Options) {}, ""},
		{"cluster name missing", func(o *Options) { o.ClusterName = "" }, "--cluster-name is required"},
		{"TLS listener without a ca-dir", func(o *Options) { o.CADir = "" }, "needs --ca-dir"},
		{"plaintext only needs no ca-dir", func(o *Options) { o.CADir, o.Listen, o.PlaintextListen = "", "", "127.0.0.1:15010" }, ""},
		{"no gRPC listener at all", func(o *Options) { o.Listen, o.PlaintextListen = "", "" }, "no gRPC listener"},
		{"negative connection age", func(o *Options) { o.MaxConnectionAge = -1 }, "--max-connection-age"},
		{"negative drain duration", func(o *Options) { o.DrainDuration = -1 }, "--drain-duration"},
		{"no drain window", func(o *Options) { o.DrainDuration = 0 }, ""},
		{"no file size limit", func(o *Options) { o.MaxFileSize = 0 }, "--max-file-size"},
		{"istiod over TLS with the ca-dir's root", func(o *Options) { o.IstiodAddress, o.IstiodTLS = "istiod:15012", true }, ""},
		{"istiod TLS without an address", func(o *Options) { o.IstiodTLS = true }, "--istiod-tls needs --istiod-address"},
		{"istiod TLS without a root to trust", func(o *Options) {
			o.IstiodAddress, o.IstiodTLS, o.CADir, o.Listen, o.PlaintextListen = "istiod:15012", true, "", "", "127.0.0.1:15010"
		}, "--istiod-ca-file"},
		{"no token audience in Kubernetes mode", func(o *Options) { o.TokenAudiences = nil }, "--token-audience"},
		{"an empty token audience", func(o *Options) { o.TokenAudiences = []string{"istio-ca", ""} }, "--token-audience"},
		{"a state namespace of its own", func(o *Options) { o.StateNamespace = "peerd-state" }, ""},
		{"a state namespace that is no namespace name", func(o *Options) { o.StateNamespace = "Peerd_State" }, "--state-namespace"},
		{"file mode reviews no tokens", func(o *Options) { o.ConfigDir, o.TokenAudiences = "/etc/peerd", nil }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := valid
			tt.mutate(&o)
			err := o.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestDefaultSANsFollowTheSystemNamespace(t *testing.T) {
	o := DefaultOptions()
	o.SystemNamespace = "mesh-system"
	got := strings.Join(o.sans(), ",")
	if got != "peerd.mesh-system.svc,istiod.mesh-system.svc" {
		t.Fatalf("sans = %s", got)
	}
	o.ServerSANs = []string{"peerd.example"}
	if got := strings.Join(o.sans(), ","); got != "peerd.example" {
		t.Fatalf("configured sans = %s", got)
	}
}
