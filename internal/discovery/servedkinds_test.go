package discovery_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	kubediscovery "k8s.io/client-go/discovery"

	"github.com/peerd-mesh/peerd/internal/discovery"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
)

// TestDecoderKnowsWhatAnAPIServerServes asks a real kube-apiserver (with the
// Gateway API CRDs) for every kind at every version it serves, and decodes a
// manifest of each: it must be read (objects, or an error about its content)
// or skipped quietly as a kind peerd does not use. Refusing a served version,
// calling a served kind a typo, or warning about it as unknown would turn a
// valid manifest into noise or a blocked file.
func TestDecoderKnowsWhatAnAPIServerServes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver (about 15 s)")
	}
	c := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	dc, err := kubediscovery.NewDiscoveryClientForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	_, lists, err := dc.ServerGroupsAndResources()
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, list := range lists {
		for _, r := range list.APIResources {
			if strings.Contains(r.Name, "/") {
				continue // a subresource, not a kind of its own in a manifest
			}
			manifest := fmt.Sprintf("apiVersion: %s\nkind: %s\nmetadata: {name: x}\n", list.GroupVersion, r.Kind)
			var skips []discovery.Skipped
			objs, err := discovery.DecodeManifestsSkipping("served.yaml", []byte(manifest), func(s discovery.Skipped) { skips = append(skips, s) })
			checked++
			what := list.GroupVersion + " " + r.Kind
			switch {
			case err != nil:
				for _, e := range joined(err) {
					var me *discovery.ManifestError
					if !errors.As(e, &me) || me.Field == "apiVersion" || me.Field == "kind" {
						t.Errorf("%s: refused for its kind or version: %v", what, e)
					}
				}
			case len(objs) == 1:
			case len(skips) == 1 && !skips[0].Warn:
			default:
				t.Errorf("%s: neither read nor quietly skipped: objects %d, skips %+v", what, len(objs), skips)
			}
		}
	}
	if checked < 50 {
		t.Fatalf("only %d kinds checked; discovery looks incomplete", checked)
	}
	t.Logf("%d served kinds and versions checked", checked)
}

func joined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
