package istio

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"google.golang.org/protobuf/proto"

	"istio.io/istio/pilot/pkg/serviceregistry/ambient"
	"istio.io/istio/pilot/pkg/serviceregistry/util/xdsfake"
	"istio.io/istio/pkg/activenotifier"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/mesh/meshwatcher"
	"istio.io/istio/pkg/config/schema/gvr"
	"istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/kube/kclient/clienttest"
	"istio.io/istio/pkg/kube/krt"
	"istio.io/istio/pkg/kube/multicluster"
	"istio.io/istio/pkg/workloadapi"
)

// istiodConfig is what the differential test tells istiod; the same values
// go into peerd's ambient.Config. TrustDomain goes into istiod's mesh config.
type istiodConfig struct {
	ClusterID       string
	DomainSuffix    string
	SystemNamespace string
	TrustDomain     string
}

// syncTimeout bounds the wait for istiod's collections on this small,
// shared machine; it is a deadline for a stuck index, not a delay.
const syncTimeout = 2 * time.Minute

// istiodView is what the differential test reads from istiod: every Address
// it would serve over WDS keyed by resource name, and its on-demand lookup
// (the key ztunnel sends, to the names of the addresses istiod answers with,
// in istiod's order).
type istiodView struct {
	Addresses map[string]*workloadapi.Address
	Lookup    func(key string) []string
}

// runIstiod runs Istio's own ambient index (pilot/pkg/serviceregistry/
// ambient) on Istio's fake kube client, loaded with objs, and returns its
// view once synced. It mirrors how
// Istio's ambientindex_test.go builds its test server: a multicluster
// controller over the fake client, istiod's default mesh config and feature
// flags, and the CRDs the index watches.
//
// The objects are created through the typed clientsets before the informers
// start, so the index's first full load sees all of them; pods get their
// status through UpdateStatus on the created object, as the kubelet would.
func runIstiod(t *testing.T, cfg istiodConfig, objs []runtime.Object) istiodView {
	t.Helper()
	cl := kube.NewFakeClient()
	t.Cleanup(cl.Shutdown)
	for _, crd := range []schema.GroupVersionResource{
		gvr.AuthorizationPolicy,
		gvr.PeerAuthentication,
		gvr.KubernetesGateway,
		gvr.GatewayClass,
		gvr.WorkloadEntry,
		gvr.ServiceEntry,
	} {
		clienttest.MakeCRD(t, cl, crd)
	}
	for _, o := range objs {
		if err := createObject(cl, o); err != nil {
			t.Fatalf("istiod fake client: %v", err)
		}
	}

	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	meshConfig := mesh.DefaultMeshConfig()
	if cfg.TrustDomain != "" {
		meshConfig.TrustDomain = cfg.TrustDomain
	}
	meshWatcher := meshwatcher.NewTestWatcher(meshConfig)
	debugger := new(krt.DebugHandler)
	mc := multicluster.NewController(multicluster.ControllerOptions{
		Client:          cl,
		ClusterID:       cluster.ID(cfg.ClusterID),
		SystemNamespace: cfg.SystemNamespace,
		MeshConfig:      meshWatcher,
		// Remote clusters come from secrets; the test creates none, so a
		// builder that is never called must still exist.
		ClientBuilder: func([]byte, cluster.ID, ...func(*rest.Config)) (kube.Client, error) {
			return nil, fmt.Errorf("the differential test has no remote clusters")
		},
		Debugger: debugger,
	})
	idx := ambient.New(ambient.Options{
		SystemNamespace:        cfg.SystemNamespace,
		DomainSuffix:           cfg.DomainSuffix,
		ClusterID:              cluster.ID(cfg.ClusterID),
		XDSUpdater:             xdsfake.NewFakeXDS(),
		StatusNotifier:         activenotifier.New(false),
		Debugger:               debugger,
		MeshConfig:             meshWatcher,
		MultiClusterController: mc,
	})
	if err := mc.Run(stop); err != nil {
		t.Fatalf("istiod multicluster controller: %v", err)
	}
	go idx.Run(stop)
	cl.RunAndWait(stop)

	synced := make(chan struct{})
	timeout := time.AfterFunc(syncTimeout, func() { close(synced) })
	defer timeout.Stop()
	if !kube.WaitForCacheSync("peerd-differential", synced, idx.HasSynced) {
		t.Fatalf("istiod's ambient index did not sync within %v", syncTimeout)
	}

	out := map[string]*workloadapi.Address{}
	for _, info := range idx.All() {
		name := info.ResourceName()
		if _, dup := out[name]; dup {
			t.Fatalf("istiod: two addresses named %q", name)
		}
		// Decode what istiod would put on the wire (the pre-marshaled
		// Any), not the in-memory struct, so both sides are compared as
		// ztunnel receives them.
		a := &workloadapi.Address{}
		if info.Marshaled != nil {
			if err := proto.Unmarshal(info.Marshaled.GetValue(), a); err != nil {
				t.Fatalf("istiod: address %q: decoding its marshaled form: %v", name, err)
			}
		} else {
			a = proto.Clone(info.Address).(*workloadapi.Address)
		}
		out[name] = a
	}
	lookup := func(key string) []string {
		var names []string
		for _, info := range idx.Lookup(key) {
			names = append(names, info.ResourceName())
		}
		return names
	}
	return istiodView{Addresses: out, Lookup: lookup}
}

// createObject creates o through the fake client's typed clientset.
func createObject(cl kube.Client, o runtime.Object) error {
	ctx := context.Background()
	opts := metav1.CreateOptions{}
	var err error
	switch o := o.(type) {
	case *corev1.Namespace:
		_, err = cl.Kube().CoreV1().Namespaces().Create(ctx, o.DeepCopy(), opts)
	case *corev1.Node:
		_, err = cl.Kube().CoreV1().Nodes().Create(ctx, o.DeepCopy(), opts)
	case *corev1.Service:
		_, err = cl.Kube().CoreV1().Services(o.Namespace).Create(ctx, o.DeepCopy(), opts)
	case *discoveryv1.EndpointSlice:
		_, err = cl.Kube().DiscoveryV1().EndpointSlices(o.Namespace).Create(ctx, o.DeepCopy(), opts)
	case *gatewayv1.Gateway:
		_, err = cl.GatewayAPI().GatewayV1().Gateways(o.Namespace).Create(ctx, o.DeepCopy(), opts)
	case *corev1.Pod:
		spec := o.DeepCopy()
		spec.Status = corev1.PodStatus{}
		var created *corev1.Pod
		created, err = cl.Kube().CoreV1().Pods(o.Namespace).Create(ctx, spec, opts)
		if err == nil {
			created.Status = *o.Status.DeepCopy()
			_, err = cl.Kube().CoreV1().Pods(o.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		}
	default:
		return fmt.Errorf("%T: no typed client wired for this kind", o)
	}
	if err != nil {
		return fmt.Errorf("creating %T %s: %w", o, objectName(o), err)
	}
	return nil
}

func objectName(o runtime.Object) string {
	if m, ok := o.(metav1.Object); ok {
		if m.GetNamespace() == "" {
			return m.GetName()
		}
		return m.GetNamespace() + "/" + m.GetName()
	}
	return "?"
}
