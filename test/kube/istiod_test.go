package kubeharness

import (
	"os"
	"regexp"
	"testing"
)

// RequireIstiod accepts only the pilot-discovery hack/istiod-tools.sh builds
// for IstioVersion; the two must name the same version, or every cached
// binary is stale (or a stale one passes).
func TestIstioVersionIsTheOneTheToolsScriptBuilds(t *testing.T) {
	script, err := os.ReadFile("../../hack/istiod-tools.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`ISTIO_VERSION="\$\{ISTIO_VERSION:-([^}]+)\}"`).FindSubmatch(script)
	if m == nil {
		t.Fatal("hack/istiod-tools.sh: no ISTIO_VERSION default")
	}
	if got := string(m[1]); got != IstioVersion {
		t.Errorf("hack/istiod-tools.sh builds istio.io/istio %s, IstioVersion is %s", got, IstioVersion)
	}
}
