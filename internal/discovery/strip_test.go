package discovery_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
)

var (
	created    = metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	deleting   = metav1.NewTime(time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC))
	heartbeat  = metav1.NewTime(time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC))
	always     = corev1.ContainerRestartPolicyAlways
	isTrue     = true
	isFalse    = false
	tcp        = corev1.ProtocolTCP
	port8080   = int32(8080)
	portName   = "http"
	controller = true
)

// noise is metadata no kind keeps.
func noise(m metav1.ObjectMeta) metav1.ObjectMeta {
	m.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}}
	m.Generation = 7
	m.Finalizers = []string{"example.com/keep"}
	if m.CreationTimestamp.IsZero() {
		m.CreationTimestamp = created
	}
	return m
}

func identity(ns, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), ResourceVersion: "42"}
}

var (
	labels           = map[string]string{"app": "echo", "topology.kubernetes.io/zone": "z1"}
	annotations      = map[string]string{"ambient.istio.io/redirection": "enabled", "networking.istio.io/traffic-distribution": "PreferClose"}
	annotationsInput = map[string]string{
		"ambient.istio.io/redirection":             "enabled",
		"networking.istio.io/traffic-distribution": "PreferClose",
		corev1.LastAppliedConfigAnnotation:         `{"kind":"Pod"}`,
	}
	owners = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "echo-5d9f", UID: "rs", Controller: &controller}}
)

// TestStrip gives each kind a fully populated object and checks that
// exactly the documented fields come out, that the input is untouched and
// that stripping twice changes nothing.
func TestStrip(t *testing.T) {
	podMeta := identity("apps", "echo-5d9f-abcde")
	podMeta.Labels, podMeta.GenerateName, podMeta.OwnerReferences, podMeta.DeletionTimestamp = labels, "echo-5d9f-", owners, &deleting
	podIn := podMeta
	podIn.Annotations = annotationsInput
	podOut := podMeta
	podOut.Annotations = annotations

	svcMeta := identity("apps", "echo")
	svcMeta.Labels, svcMeta.CreationTimestamp = labels, created
	svcIn, svcOut := svcMeta, svcMeta
	svcIn.Annotations, svcOut.Annotations = annotationsInput, annotations
	svcIn.OwnerReferences = owners
	svcSpec := corev1.ServiceSpec{
		Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
		IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}, Selector: map[string]string{"app": "echo"},
		Ports:                    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: tcp}},
		PublishNotReadyAddresses: true,
	}

	nsMeta := identity("", "apps")
	nsMeta.Labels = labels
	nsIn, nsOut := nsMeta, nsMeta
	nsIn.Annotations, nsOut.Annotations = annotationsInput, annotations

	nodeMeta := identity("", "node-a")
	nodeMeta.Labels = labels
	nodeIn := nodeMeta
	nodeIn.Annotations = annotationsInput

	sliceMeta := identity("apps", "echo-x1")
	sliceMeta.Labels = map[string]string{discoveryv1.LabelServiceName: "echo"}
	sliceIn := sliceMeta
	sliceIn.Annotations = map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-02T03:04:05Z"}
	sliceIn.OwnerReferences = owners
	slicePorts := []discoveryv1.EndpointPort{{Name: &portName, Port: &port8080, Protocol: &tcp}}
	target := &corev1.ObjectReference{Kind: "Pod", Namespace: "apps", Name: "echo-5d9f-abcde", UID: "uid-echo-5d9f-abcde"}
	zone, node := "z1", "node-a"

	gwMeta := identity("istio-system", "eastwest")
	gwMeta.Labels, gwMeta.CreationTimestamp = labels, created
	gwIn, gwOut := gwMeta, gwMeta
	gwIn.Annotations, gwOut.Annotations = annotationsInput, annotations
	// The generation stays: it is the observedGeneration of the link
	// conditions peerd writes (noise sets 7).
	gwOut.Generation = 7
	gwSpec := gatewayv1.GatewaySpec{
		GatewayClassName: "istio-eastwest",
		Listeners:        []gatewayv1.Listener{{Name: "xds-tls", Port: 15012, Protocol: gatewayv1.TLSProtocolType}},
	}
	gwAddresses := []gatewayv1.GatewayStatusAddress{{Value: "192.0.2.10"}}

	tests := []struct {
		name    string
		in, out runtime.Object
	}{
		{
			name: "pod",
			in: &corev1.Pod{
				TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
				ObjectMeta: noise(podIn),
				Spec: corev1.PodSpec{
					ServiceAccountName: "echo", NodeName: "node-a", HostNetwork: true,
					Containers: []corev1.Container{{
						Name: "echo", Image: "example.com/echo:1", Args: []string{"--port=8080"},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: tcp}},
						Env:   []corev1.EnvVar{{Name: "A", Value: "b"}},
					}},
					InitContainers: []corev1.Container{
						{Name: "sidecar", Image: "example.com/proxy:1", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 15000, Protocol: tcp}}},
						{Name: "init", Image: "example.com/init:1"},
					},
					Volumes:     []corev1.Volume{{Name: "data"}},
					Tolerations: []corev1.Toleration{{Key: "k"}},
				},
				Status: corev1.PodStatus{
					Phase: corev1.PodRunning, PodIP: "10.244.0.5", PodIPs: []corev1.PodIP{{IP: "10.244.0.5"}, {IP: "fd00::5"}},
					HostIP: "192.0.2.1", StartTime: &created,
					Conditions: []corev1.PodCondition{
						{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: heartbeat},
						{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: heartbeat, LastProbeTime: heartbeat, Reason: "ContainersNotReady", Message: "not yet"},
						{Type: corev1.ContainersReady, Status: corev1.ConditionFalse},
					},
					ContainerStatuses: []corev1.ContainerStatus{{Name: "echo", RestartCount: 3}},
				},
			},
			out: &corev1.Pod{
				TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
				ObjectMeta: podOut,
				Spec: corev1.PodSpec{
					ServiceAccountName: "echo", NodeName: "node-a", HostNetwork: true,
					Containers: []corev1.Container{{Name: "echo", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: tcp}}}},
					InitContainers: []corev1.Container{
						{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 15000, Protocol: tcp}}},
						{Name: "init"},
					},
				},
				Status: corev1.PodStatus{
					Phase: corev1.PodRunning, PodIP: "10.244.0.5", PodIPs: []corev1.PodIP{{IP: "10.244.0.5"}, {IP: "fd00::5"}},
					Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}},
				},
			},
		},
		{
			name: "node: labels only, no status (heartbeats)",
			in: &corev1.Node{
				ObjectMeta: noise(nodeIn),
				Spec:       corev1.NodeSpec{PodCIDR: "10.244.0.0/24", ProviderID: "kind://node-a"},
				Status: corev1.NodeStatus{
					Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: heartbeat}},
					Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.1"}},
					Images:     []corev1.ContainerImage{{Names: []string{"example.com/echo:1"}, SizeBytes: 1 << 20}},
				},
			},
			out: &corev1.Node{ObjectMeta: nodeMeta},
		},
		{
			name: "namespace",
			in: &corev1.Namespace{
				ObjectMeta: noise(nsIn),
				Spec:       corev1.NamespaceSpec{Finalizers: []corev1.FinalizerName{corev1.FinalizerKubernetes}},
				Status:     corev1.NamespaceStatus{Phase: corev1.NamespaceActive},
			},
			out: &corev1.Namespace{ObjectMeta: nsOut},
		},
		{
			name: "service keeps its spec and creation time",
			in: &corev1.Service{
				ObjectMeta: noise(svcIn),
				Spec:       svcSpec,
				Status:     corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "192.0.2.7"}}}},
			},
			out: &corev1.Service{ObjectMeta: svcOut, Spec: svcSpec},
		},
		{
			name: "endpointslice",
			in: &discoveryv1.EndpointSlice{
				ObjectMeta:  noise(sliceIn),
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       slicePorts,
				Endpoints: []discoveryv1.Endpoint{{
					Addresses:  []string{"10.244.0.5"},
					Conditions: discoveryv1.EndpointConditions{Ready: &isFalse, Serving: &isTrue, Terminating: &isTrue},
					Hostname:   &node, NodeName: &node, Zone: &zone, TargetRef: target,
					Hints: &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: zone}}},
				}},
			},
			out: &discoveryv1.EndpointSlice{
				ObjectMeta:  sliceMeta,
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       slicePorts,
				Endpoints: []discoveryv1.Endpoint{{
					Addresses: []string{"10.244.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: &isFalse}, TargetRef: target,
				}},
			},
		},
		{
			name: "gateway keeps generation, spec and status addresses",
			in: &gatewayv1.Gateway{
				ObjectMeta: noise(gwIn),
				Spec:       gwSpec,
				Status: gatewayv1.GatewayStatus{
					Addresses:  gwAddresses,
					Conditions: []metav1.Condition{{Type: "Programmed", Status: metav1.ConditionTrue, LastTransitionTime: heartbeat}},
					Listeners:  []gatewayv1.ListenerStatus{{Name: "xds-tls", AttachedRoutes: 3}},
				},
			},
			out: &gatewayv1.Gateway{ObjectMeta: gwOut, Spec: gwSpec, Status: gatewayv1.GatewayStatus{Addresses: gwAddresses}},
		},
		{
			name: "other types pass through",
			in:   &corev1.ConfigMap{ObjectMeta: noise(identity("apps", "cm")), Data: map[string]string{"a": "b"}},
			out:  &corev1.ConfigMap{ObjectMeta: noise(identity("apps", "cm")), Data: map[string]string{"a": "b"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.in.DeepCopyObject()
			got := discovery.Strip(tc.in)
			if diff := cmp.Diff(tc.out, got); diff != "" {
				t.Errorf("Strip (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, tc.in); diff != "" {
				t.Errorf("Strip modified its input (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(got, discovery.Strip(got)); diff != "" {
				t.Errorf("Strip is not idempotent (-once +twice):\n%s", diff)
			}
		})
	}
}

// TestStripKeepsWhatTheMappingReads: ambient.Build gives the same addresses
// and warnings for stripped objects as for the originals, on every manifest
// set the project keeps (the example cluster and the differential sets).
func TestStripKeepsWhatTheMappingReads(t *testing.T) {
	sets := map[string]string{"examples/cluster1": filepath.Join("..", "..", "examples", "cluster1")}
	diffSets, err := filepath.Glob(filepath.Join("..", "..", "test", "istio", "testdata", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range diffSets {
		sets["test/istio/testdata/"+filepath.Base(dir)] = dir
	}
	for name, dir := range sets {
		t.Run(name, func(t *testing.T) {
			objs := decodeDir(t, dir)
			stripped := make([]runtime.Object, len(objs))
			for i, o := range objs {
				stripped[i] = discovery.Strip(o.DeepCopyObject())
			}
			for _, cfg := range []ambient.Config{
				{ClusterID: "cluster1"},
				{ClusterID: "cluster1", Network: "network1", TrustDomain: "cluster1.local", SystemNamespace: "istio-system"},
			} {
				want := ambient.Build(cfg, inputs(objs))
				got := ambient.Build(cfg, inputs(stripped))
				if len(want.Addresses) == 0 {
					t.Fatalf("%s maps to no addresses: the comparison would prove nothing", dir)
				}
				if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
					t.Errorf("config %+v: Build differs after Strip (-original +stripped):\n%s", cfg, diff)
				}
			}
		})
	}
}

func decodeDir(t *testing.T, dir string) []runtime.Object {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s (%v)", dir, err)
	}
	var out []runtime.Object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := discovery.DecodeManifests(f, data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, objs...)
	}
	return out
}

func inputs(objs []runtime.Object) ambient.Inputs {
	var in discovery.Objects
	for _, o := range objs {
		in.Add(o)
	}
	return ambient.Inputs(in)
}
