package meshconfig

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, text          string
		trustDomain, rootNS string
		err                 string
	}{
		{name: "empty text is the empty config", text: "\n"},
		{
			name: "the fields istiod's chart writes",
			text: "defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n  proxyMetadata: {}\n" +
				"trustDomain: cluster1.local\nrootNamespace: istio-system\nenablePrometheusMerge: true\nconnectTimeout: 10s\n",
			trustDomain: "cluster1.local", rootNS: "istio-system",
		},
		{
			name:        "fields and enum values of a newer istiod are skipped",
			text:        "trustDomain: td\nsomeFieldFromTheFuture: {a: 1}\noutboundTrafficPolicy: {mode: SOMETHING_NEW}\n",
			trustDomain: "td",
		},
		{name: "not YAML", text: "trustDomain: [", err: "yaml"},
		{name: "a field of the wrong type", text: "trustDomain: {a: b}", err: "trust"},
		{name: "not a mapping", text: "- a\n- b\n", err: "unexpected token ["},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mc, err := Parse(tc.text)
			if tc.err != "" {
				if err == nil || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(tc.err)) {
					t.Fatalf("Parse = %v, %v; want an error mentioning %q", mc, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if mc.GetTrustDomain() != tc.trustDomain || mc.GetRootNamespace() != tc.rootNS {
				t.Errorf("trustDomain %q rootNamespace %q, want %q %q", mc.GetTrustDomain(), mc.GetRootNamespace(), tc.trustDomain, tc.rootNS)
			}
		})
	}
}
