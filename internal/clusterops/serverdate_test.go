package clusterops

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// TestReadLeaseTakesTheServersDate: the time check judges the Lease by is
// the Date header of the API server's answer, whatever the local clock
// says. An HTTP server stands in for the API server because a real one
// cannot be given a skewed clock.
func TestReadLeaseTakesTheServersDate(t *testing.T) {
	serverNow := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", serverNow.Format(http.TimeFormat))
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path != "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/peerd" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		_ = json.NewEncoder(w).Encode(lease("peerd-1", serverNow.Add(-time.Second), 15))
	}))
	defer srv.Close()
	c, err := NewCluster("c1", &rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	l, at, err := readLease(context.Background(), c, "istio-system")
	if err != nil {
		t.Fatal(err)
	}
	if !at.Equal(serverNow) || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != "peerd-1" {
		t.Errorf("server time %v (want %v), lease %+v", at, serverNow, l.Spec)
	}
	// A read without withServerDate records nothing, and does not fail.
	if _, err := c.Kube.CoordinationV1().Leases("istio-system").Get(context.Background(), "peerd", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
}
