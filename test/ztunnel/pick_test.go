package ztunnel_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/peerd-mesh/peerd/internal/explain"
	"github.com/peerd-mesh/peerd/internal/xds"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// pickMesh: a global service "apps/echo.apps.mesh.internal" (PreferNetwork:
// FAILOVER [NETWORK]) with one local pod on node-a (cluster c1, net1) and a
// remote cluster c2 behind its e/w gateway, capacity 3.
func pickMesh(localStatus workloadpb.WorkloadStatus) []xds.Resource {
	const key = "apps/echo.apps.mesh.internal"
	endpointOf := func(w *workloadpb.Workload) {
		w.Services = map[string]*workloadpb.PortList{key: {Ports: []*workloadpb.Port{{ServicePort: 80, TargetPort: 8080}}}}
	}
	return []xds.Resource{
		svc(key, func(s *workloadpb.Service) {
			s.Name, s.Namespace, s.Hostname = "echo", "apps", "echo.apps.mesh.internal"
			s.Addresses = []*workloadpb.NetworkAddress{{Network: "net1", Address: []byte{240, 240, 0, 1}}}
			s.LoadBalancing = &workloadpb.LoadBalancing{Mode: workloadpb.LoadBalancing_FAILOVER,
				RoutingPreference: []workloadpb.LoadBalancing_Scope{workloadpb.LoadBalancing_NETWORK}}
		}),
		wl("c1//Pod/apps/echo-0", endpointOf, func(w *workloadpb.Workload) {
			w.Network, w.Node, w.ClusterId, w.Status = "net1", "node-a", "c1", localStatus
			w.Locality = &workloadpb.Locality{Region: "us-east", Zone: "us-east-1a"}
		}),
		wl("c2/apps/echo", endpointOf, func(w *workloadpb.Workload) {
			w.Addresses, w.Network, w.ClusterId = nil, "net2", "c2"
			w.Capacity = wrapperspb.UInt32(3)
			w.NetworkGateway = &workloadpb.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadpb.GatewayAddress_Address{
				Address: &workloadpb.NetworkAddress{Network: "net2", Address: []byte{192, 0, 2, 10}}}}
		}),
		wl("c2/gateway", func(w *workloadpb.Workload) {
			w.Addresses, w.Network, w.ClusterId = [][]byte{{192, 0, 2, 10}}, "net2", "c2"
		}),
	}
}

func TestPickFollowsTheHeldState(t *testing.T) {
	h, addrs := peerdServer(t)
	addrs.Replace(pickMesh(workloadpb.WorkloadStatus_HEALTHY))
	c := h.start(ztunnel.Config{NodeName: "node-a", ClusterID: "c1", Network: "net1"})
	wait(t, c, "ready", func(s *ztunnel.State) bool { return s.Ready })

	wantSource := explain.Client{Network: "net1", Node: "node-a", Cluster: "c1", Locality: explain.Locality{Region: "us-east", Zone: "us-east-1a"}}
	if diff := cmp.Diff(wantSource, c.Source()); diff != "" {
		t.Errorf("source (-want +got):\n%s", diff)
	}

	// By VIP, hostname or key: the same answer, local only.
	for _, service := range []string{"apps/echo.apps.mesh.internal", "240.240.0.1", "echo.apps.mesh.internal"} {
		r, err := c.Pick(service)
		if err != nil {
			t.Fatalf("Pick(%s): %v", service, err)
		}
		if diff := cmp.Diff(map[string]float64{"c1": 1}, r.ByCluster()); diff != "" {
			t.Errorf("Pick(%s) by cluster (-want +got):\n%s", service, diff)
		}
	}
	r, _ := c.Pick("apps/echo.apps.mesh.internal")
	if e, _ := r.Endpoint("c2/apps/echo"); e.Outcome != explain.Outranked || e.Gateway == nil || e.Gateway.Workload != "c2/gateway" {
		t.Errorf("remote endpoint = %+v, want outranked, behind gateway workload c2/gateway", e)
	}

	// The local pod goes unready: traffic fails over to cluster 2.
	addrs.Replace(pickMesh(workloadpb.WorkloadStatus_UNHEALTHY))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	r, err := c.WaitPick(ctx, "apps/echo.apps.mesh.internal", ztunnel.SendsOnlyTo(map[string]float64{"c2": 1}))
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := r.Endpoint("c2/apps/echo"); e.Reason != "other network via gateway 192.0.2.10:15008; failover: no usable endpoint on the client's network" {
		t.Errorf("failover reason = %q", e.Reason)
	}

	// A client elsewhere, asked explicitly.
	if _, err := c.PickFrom("echo.apps.mesh.internal", explain.Client{Network: "net2"}); !errors.Is(err, explain.ErrUnknownService) {
		t.Errorf("PickFrom a client on net2 (no VIP there): %v, want ErrUnknownService", err)
	}
}

func TestWaitPickSaysWhereTrafficWent(t *testing.T) {
	h, addrs := peerdServer(t)
	addrs.Replace(pickMesh(workloadpb.WorkloadStatus_HEALTHY))
	c := h.start(ztunnel.Config{NodeName: "node-a", ClusterID: "c1", Network: "net1"})
	wait(t, c, "ready", func(s *ztunnel.State) bool { return s.Ready })
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // already over: the first answer is the last
	_, err := c.WaitPick(ctx, "apps/echo.apps.mesh.internal", ztunnel.NoHealthyUpstream)
	if err == nil || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "map[c1:1]") {
		t.Fatalf("error %v, want the last answer (c1: 1) and context.Canceled", err)
	}
}
