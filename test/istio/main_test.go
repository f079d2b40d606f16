package istio

import (
	"os"
	"testing"

	"istio.io/istio/pkg/log"
)

// TestMain quiets istiod's own logging to errors: at its default level every
// differential case prints a few hundred lines of informer progress that
// would bury the differences this module exists to show.
func TestMain(m *testing.M) {
	for _, s := range log.Scopes() {
		s.SetOutputLevel(log.ErrorLevel)
	}
	os.Exit(m.Run())
}
