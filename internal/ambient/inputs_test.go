package ambient_test

import (
	"testing"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
)

// Inputs must stay convertible from discovery.Objects: callers write
// ambient.Inputs(index.Snapshot()).
func TestInputsConvertFromDiscoveryObjects(t *testing.T) {
	out := ambient.Build(ambient.Config{ClusterID: "c1"}, ambient.Inputs(discovery.Objects{}))
	if len(out.Addresses) != 0 || len(out.Warnings) != 0 {
		t.Fatalf("empty inputs gave %v", out)
	}
}
