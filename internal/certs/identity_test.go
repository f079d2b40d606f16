package certs

import (
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
)

func TestParseSPIFFE(t *testing.T) {
	for _, tc := range []struct {
		name, uri string
		want      Identity
		wantErr   string
	}{
		{"istio identity", "spiffe://cluster2.local/ns/istio-system/sa/peerd", Identity{"cluster2.local", "istio-system", "peerd"}, ""},
		{"underscore and dash in trust domain", "spiffe://east_1-a.example/ns/a/sa/b", Identity{"east_1-a.example", "a", "b"}, ""},
		{"wrong scheme", "https://cluster.local/ns/a/sa/b", Identity{}, "scheme: want spiffe://"},
		{"empty trust domain", "spiffe:///ns/a/sa/b", Identity{}, "trust domain: empty"},
		{"upper-case trust domain", "spiffe://Cluster.local/ns/a/sa/b", Identity{}, `trust domain "Cluster.local": character 'C'`},
		{"port in trust domain", "spiffe://cluster.local:443/ns/a/sa/b", Identity{}, "character ':'"},
		{"no path", "spiffe://cluster.local", Identity{}, `path "/": want /ns/<namespace>/sa/<service-account>`},
		{"other path", "spiffe://cluster.local/workload/x", Identity{}, `path "/workload/x"`},
		{"extra segment", "spiffe://cluster.local/ns/a/sa/b/c", Identity{}, `path "/ns/a/sa/b/c"`},
		{"empty namespace", "spiffe://cluster.local/ns//sa/b", Identity{}, "namespace: empty"},
		{"empty service account", "spiffe://cluster.local/ns/a/sa/", Identity{}, "service account: empty"},
		{"query", "spiffe://cluster.local/ns/a/sa/b?x=1", Identity{}, `service account "b?x=1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSPIFFE(tc.uri)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.uri) {
					t.Fatalf("err = %v, want it to name %q and contain %q", err, tc.uri, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseSPIFFE(%q) = %+v, %v; want %+v", tc.uri, got, err, tc.want)
			}
			if got.String() != tc.uri || got.URI().String() != tc.uri {
				t.Errorf("String() = %s, URI() = %s; want both %s", got, got.URI(), tc.uri)
			}
		})
	}
}

func TestCertificateIdentity(t *testing.T) {
	uri := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	peerd := "spiffe://c.local/ns/istio-system/sa/peerd"
	for _, tc := range []struct {
		name    string
		uris    []*url.URL
		wantErr string
	}{
		{"one SPIFFE ID", []*url.URL{uri(peerd)}, ""},
		{"none", nil, "no SPIFFE ID (no URI SAN)"},
		{"two", []*url.URL{uri(peerd), uri("spiffe://c.local/ns/x/sa/y")}, "2 URI SANs, want exactly one SPIFFE ID"},
		{"not SPIFFE", []*url.URL{uri("https://example.com/")}, "scheme: want spiffe://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := CertificateIdentity(&x509.Certificate{URIs: tc.uris})
			switch {
			case tc.wantErr == "" && (err != nil || id.String() != peerd):
				t.Fatalf("= %s, %v; want %s", id, err, peerd)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
