package discovery

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func decodeOne[T runtime.Object](t *testing.T, manifest string) T {
	t.Helper()
	objs, err := DecodeManifests("m.yaml", []byte(manifest))
	if err != nil {
		t.Fatalf("DecodeManifests: %v", err)
	}
	if len(objs) != 1 {
		t.Fatalf("DecodeManifests gave %d objects, want 1", len(objs))
	}
	obj, ok := objs[0].(T)
	if !ok {
		t.Fatalf("DecodeManifests gave %T", objs[0])
	}
	return obj
}

func TestDecodeServiceDefaults(t *testing.T) {
	s := decodeOne[*corev1.Service](t, `
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  clusterIP: 10.96.0.10
  selector: {app: echo}
  ports:
  - name: http
    port: 80
  - name: grpc
    port: 9090
    targetPort: grpc
    protocol: UDP
`)
	if s.Namespace != "default" {
		t.Errorf("namespace = %q, want default", s.Namespace)
	}
	cluster := corev1.ServiceInternalTrafficPolicyCluster
	single := corev1.IPFamilyPolicySingleStack
	want := corev1.ServiceSpec{
		Type:            corev1.ServiceTypeClusterIP,
		ClusterIP:       "10.96.0.10",
		ClusterIPs:      []string{"10.96.0.10"},
		IPFamilies:      []corev1.IPFamily{corev1.IPv4Protocol},
		IPFamilyPolicy:  &single,
		SessionAffinity: corev1.ServiceAffinityNone,
		Selector:        map[string]string{"app": "echo"},
		Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(80)},
			{Name: "grpc", Port: 9090, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("grpc")},
		},
		InternalTrafficPolicy: &cluster,
	}
	if diff := cmp.Diff(want, s.Spec); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
}

func TestDecodeServiceIPFamilies(t *testing.T) {
	cases := []struct {
		name       string
		spec       string
		wantPolicy corev1.IPFamilyPolicy
		wantFams   []corev1.IPFamily
		wantIPs    []string
	}{
		{"IPv6 cluster IP", "clusterIP: fd00::10", corev1.IPFamilyPolicySingleStack, []corev1.IPFamily{"IPv6"}, []string{"fd00::10"}},
		{"dual stack", "clusterIP: 10.96.0.20\n  clusterIPs: [10.96.0.20, fd00::20]\n  ipFamilyPolicy: RequireDualStack",
			corev1.IPFamilyPolicyRequireDualStack, []corev1.IPFamily{"IPv4", "IPv6"}, []string{"10.96.0.20", "fd00::20"}},
		{"PreferDualStack with one IP stays single", "clusterIP: 10.96.0.21\n  ipFamilyPolicy: PreferDualStack",
			corev1.IPFamilyPolicyPreferDualStack, []corev1.IPFamily{"IPv4"}, []string{"10.96.0.21"}},
		{"headless with selector", "clusterIP: None\n  selector: {app: x}", corev1.IPFamilyPolicySingleStack, []corev1.IPFamily{"IPv4"}, []string{"None"}},
		{"headless without selector", "clusterIP: None", corev1.IPFamilyPolicyRequireDualStack, []corev1.IPFamily{"IPv4", "IPv6"}, []string{"None"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := decodeOne[*corev1.Service](t, "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: apps}\nspec:\n  "+c.spec+"\n  ports: [{port: 80}]\n")
			if got := *s.Spec.IPFamilyPolicy; got != c.wantPolicy {
				t.Errorf("ipFamilyPolicy = %s, want %s", got, c.wantPolicy)
			}
			if diff := cmp.Diff(c.wantFams, s.Spec.IPFamilies); diff != "" {
				t.Errorf("ipFamilies (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(c.wantIPs, s.Spec.ClusterIPs); diff != "" {
				t.Errorf("clusterIPs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeExternalNameAndLoadBalancer(t *testing.T) {
	objs, err := DecodeManifests("m.yaml", []byte(`
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: apps}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: apps}
spec: {type: LoadBalancer, clusterIP: 10.96.0.5, ports: [{port: 443}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	ext, lb := objs[0].(*corev1.Service), objs[1].(*corev1.Service)
	if ext.Spec.InternalTrafficPolicy != nil || ext.Spec.IPFamilies != nil || ext.Spec.ClusterIPs != nil {
		t.Errorf("ExternalName got IP defaults: %+v", ext.Spec)
	}
	if lb.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyCluster {
		t.Errorf("LoadBalancer externalTrafficPolicy = %q, want Cluster", lb.Spec.ExternalTrafficPolicy)
	}
	if lb.Spec.AllocateLoadBalancerNodePorts == nil || !*lb.Spec.AllocateLoadBalancerNodePorts {
		t.Error("LoadBalancer allocateLoadBalancerNodePorts not defaulted to true")
	}
}

func TestDecodePodDefaults(t *testing.T) {
	p := decodeOne[*corev1.Pod](t, `
apiVersion: v1
kind: Pod
metadata: {name: echo-1, namespace: apps}
spec:
  initContainers:
  - name: sidecar
    restartPolicy: Always
    ports: [{containerPort: 15001}]
  containers:
  - name: app
    ports:
    - containerPort: 8080
      name: http
    - containerPort: 53
      protocol: UDP
status:
  podIP: 10.244.0.5
  hostIP: 172.18.0.2
`)
	if got := p.Spec.ServiceAccountName; got != "default" {
		t.Errorf("serviceAccountName = %q, want default (ServiceAccount admission)", got)
	}
	if got := p.Spec.Containers[0].Ports[0].Protocol; got != corev1.ProtocolTCP {
		t.Errorf("container port protocol = %q, want TCP", got)
	}
	if got := p.Spec.Containers[0].Ports[1].Protocol; got != corev1.ProtocolUDP {
		t.Errorf("explicit UDP became %q", got)
	}
	if got := p.Spec.InitContainers[0].Ports[0].Protocol; got != corev1.ProtocolTCP {
		t.Errorf("init container port protocol = %q, want TCP", got)
	}
	if diff := cmp.Diff([]corev1.PodIP{{IP: "10.244.0.5"}}, p.Status.PodIPs); diff != "" {
		t.Errorf("podIPs from podIP (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]corev1.HostIP{{IP: "172.18.0.2"}}, p.Status.HostIPs); diff != "" {
		t.Errorf("hostIPs from hostIP (-want +got):\n%s", diff)
	}
	if p.Status.Phase != "" || p.Status.Conditions != nil {
		t.Errorf("pod status got defaults: phase %q, conditions %v", p.Status.Phase, p.Status.Conditions)
	}
	if p.Spec.RestartPolicy != corev1.RestartPolicyAlways || p.Spec.DNSPolicy != corev1.DNSClusterFirst {
		t.Errorf("pod spec defaults: restartPolicy %q dnsPolicy %q", p.Spec.RestartPolicy, p.Spec.DNSPolicy)
	}
}

func TestDecodePodIPsAndServiceAccountAliases(t *testing.T) {
	p := decodeOne[*corev1.Pod](t, `
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: apps}
spec:
  serviceAccount: legacy
  hostNetwork: true
  containers: [{name: c, ports: [{containerPort: 9000}]}]
status:
  podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]
`)
	if p.Spec.ServiceAccountName != "legacy" {
		t.Errorf("serviceAccountName = %q, want legacy from serviceAccount", p.Spec.ServiceAccountName)
	}
	if p.Status.PodIP != "10.0.0.1" {
		t.Errorf("podIP = %q, want podIPs[0]", p.Status.PodIP)
	}
	if got := p.Spec.Containers[0].Ports[0].HostPort; got != 9000 {
		t.Errorf("host-network hostPort = %d, want containerPort 9000", got)
	}
}

func TestDecodeEndpointSliceNamespaceNodeGatewayDefaults(t *testing.T) {
	objs, err := DecodeManifests("m.yaml", []byte(`
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, namespace: apps}
addressType: IPv4
ports: [{port: 443}]
endpoints: [{addresses: [192.168.1.10]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, namespace: ignored}
---
apiVersion: v1
kind: Node
metadata: {name: worker}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: east, namespace: istio-system}
spec:
  gatewayClassName: istio-remote
  addresses: [{value: 172.18.0.10}]
  listeners:
  - {name: xds-tls, port: 15012, protocol: TLS, tls: {}}
`))
	if err != nil {
		t.Fatal(err)
	}
	es := objs[0].(*discoveryv1.EndpointSlice)
	if p := es.Ports[0]; p.Protocol == nil || *p.Protocol != corev1.ProtocolTCP || p.Name == nil || *p.Name != "" {
		t.Errorf("EndpointSlice port defaults: %+v", p)
	}
	ns := objs[1].(*corev1.Namespace)
	if ns.Namespace != "" || ns.Labels[corev1.LabelMetadataName] != "apps" || ns.Status.Phase != corev1.NamespaceActive {
		t.Errorf("Namespace defaults: namespace %q labels %v phase %q", ns.Namespace, ns.Labels, ns.Status.Phase)
	}
	if n := objs[2].(*corev1.Node); n.Namespace != "" {
		t.Errorf("Node namespace = %q", n.Namespace)
	}
	gw := objs[3].(*gatewayv1.Gateway)
	if a := gw.Spec.Addresses[0]; a.Type == nil || *a.Type != gatewayv1.IPAddressType {
		t.Errorf("gateway address type not defaulted to IPAddress: %+v", a)
	}
	l := gw.Spec.Listeners[0]
	if l.TLS.Mode == nil || *l.TLS.Mode != gatewayv1.TLSModeTerminate {
		t.Errorf("listener tls.mode not defaulted to Terminate")
	}
	if l.AllowedRoutes == nil || *l.AllowedRoutes.Namespaces.From != gatewayv1.NamespacesFromSame {
		t.Errorf("listener allowedRoutes not defaulted to from: Same")
	}
}

func TestDecodeSkipsEmptyAndUnusedKinds(t *testing.T) {
	data := []byte(`
# only a comment
---
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: apps}
spec: {hosts: [example.com], whatever: [1, 2]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {a: b}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: apps}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: apps}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
---
apiVersion: apps/v1beta9
kind: Deployment
metadata: {name: d2, namespace: apps}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Secret, metadata: {name: s}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: MeshPolicyFromTheFuture
metadata: {name: f}
`)
	type skipped struct {
		doc, item int
		gvk, name string
		warn      bool
	}
	var got []skipped
	objs, err := decodeManifests("m.yaml", data, func(sk Skipped) {
		got = append(got, skipped{sk.Document, sk.Item, sk.GVK.String(), sk.Name, sk.Warn})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 {
		t.Fatalf("got %d objects, want the Namespace only", len(objs))
	}
	// Kubernetes and Gateway API kinds peerd does not read are skipped
	// quietly; what peerd does not know at all is a warning.
	want := []skipped{
		{2, -1, "networking.istio.io/v1, Kind=ServiceEntry", "ext", true},
		{3, -1, "/v1, Kind=ConfigMap", "c", false},
		{5, -1, "apps/v1, Kind=Deployment", "d", false},
		{6, -1, "gateway.networking.k8s.io/v1, Kind=HTTPRoute", "r", false},
		{7, -1, "example.com/v1, Kind=Widget", "w", true},
		{8, -1, "apps/v1beta9, Kind=Deployment", "d2", true},
		{9, 0, "/v1, Kind=Secret", "s", false},
		{10, -1, "gateway.networking.k8s.io/v1, Kind=MeshPolicyFromTheFuture", "f", true},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(skipped{})); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}
}

func TestDecodeTypedListsAsKubectl(t *testing.T) {
	objs, err := DecodeManifests("list.yaml", []byte(`
apiVersion: v1
kind: ServiceList
metadata: {resourceVersion: "12"}
items:
- metadata: {name: echo, namespace: apps}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
- apiVersion: v1
  kind: Namespace
  metadata: {name: apps}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: GatewayList
items:
- metadata: {name: east, namespace: istio-system}
  spec:
    gatewayClassName: istio-eastwest
    listeners: [{name: cross-network, port: 15008, protocol: HBONE}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"service apps/echo", "namespace apps", "gateway istio-system/east"}, objectNames(objs)); diff != "" {
		t.Fatalf("objects (-want +got):\n%s", diff)
	}
	if s := objs[0].(*corev1.Service); s.Spec.Ports[0].Protocol != corev1.ProtocolTCP {
		t.Error("typed list item not defaulted")
	}
	if gw := objs[2].(*gatewayv1.Gateway); gw.APIVersion != "gateway.networking.k8s.io/v1" {
		t.Errorf("v1beta1 list item read as apiVersion %q, want it converted to v1", gw.APIVersion)
	}
}

func objectNames(objs []runtime.Object) []string {
	var out []string
	for _, o := range objs {
		key, err := KeyOf(o)
		if err != nil {
			out = append(out, err.Error())
			continue
		}
		out = append(out, key.String())
	}
	return out
}

// TestDecodeGatewayV1beta1 reads a Gateway at both versions the CRD serves:
// the same object comes out.
func TestDecodeGatewayV1beta1(t *testing.T) {
	const gw = `kind: Gateway
metadata: {name: east, namespace: istio-system}
spec:
  gatewayClassName: istio-eastwest
  listeners: [{name: cross-network, port: 15008, protocol: HBONE, tls: {mode: Passthrough}}]
`
	v1 := decodeOne[*gatewayv1.Gateway](t, "apiVersion: gateway.networking.k8s.io/v1\n"+gw)
	beta := decodeOne[*gatewayv1.Gateway](t, "apiVersion: gateway.networking.k8s.io/v1beta1\n"+gw)
	if diff := cmp.Diff(v1, beta); diff != "" {
		t.Errorf("v1beta1 Gateway differs from v1 (-v1 +v1beta1):\n%s", diff)
	}
}

func TestDecodeList(t *testing.T) {
	objs, err := DecodeManifests("list.yaml", []byte(`
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: apps}
- apiVersion: v1
  kind: Service
  metadata: {name: echo, namespace: apps}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 {
		t.Fatalf("got %d objects from the List, want 2", len(objs))
	}
	if s := objs[1].(*corev1.Service); s.Spec.Ports[0].Protocol != corev1.ProtocolTCP {
		t.Error("List item not defaulted")
	}
}

// TestDecodeErrors pins the message format: file, document (1-based), the
// object when known, the field when known, then what is wrong.
func TestDecodeErrors(t *testing.T) {
	const svcHead = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: apps}\n"
	cases := []struct {
		name     string
		manifest string
		want     string
		field    string
		wrapped  error
	}{
		{
			name:     "non-headless service without clusterIP",
			manifest: "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n---\n---\n" + svcHead + "spec: {ports: [{port: 80}]}\n",
			want:     `apps.yaml: document 3: service apps/echo: spec.clusterIP: required: a non-headless Service needs its cluster IP in the file (no API server allocates one here); use "None" for a headless Service`,
			field:    "spec.clusterIP",
			wrapped:  ErrRequired,
		},
		{
			name:     "unknown field, with list index",
			manifest: svcHead + "spec: {clusterIP: 10.96.0.1, ports: [{port: 80, portt: 81}]}\n",
			want:     `apps.yaml: document 1: service apps/echo: spec.ports[0].portt: invalid value: unknown field`,
			field:    "spec.ports[0].portt",
			wrapped:  ErrInvalid,
		},
		{
			name:     "wrong type, index resolved from the document",
			manifest: svcHead + "spec:\n  clusterIP: 10.96.0.1\n  ports:\n  - {name: a, port: 80}\n  - {name: b, port: eighty}\n",
			want:     `apps.yaml: document 1: service apps/echo: spec.ports[1].port: invalid value: got string, want int32`,
			field:    "spec.ports[1].port",
			wrapped:  ErrInvalid,
		},
		{
			name:     "target port out of range",
			manifest: svcHead + "spec: {clusterIP: 10.96.0.1, ports: [{port: 80, targetPort: 70000}]}\n",
			want:     `apps.yaml: document 1: service apps/echo: spec.ports[0].targetPort: invalid value "70000": must be between 1 and 65535`,
			field:    "spec.ports[0].targetPort",
			wrapped:  ErrInvalid,
		},
		{
			name:     "bad cluster IP",
			manifest: svcHead + "spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n",
			want:     `apps.yaml: document 1: service apps/echo: spec.clusterIP: invalid value "10.96.0.300": not an IP address`,
			field:    "spec.clusterIP",
			wrapped:  ErrInvalid,
		},
		{
			name:     "two cluster IPs as SingleStack",
			manifest: svcHead + "spec: {clusterIP: 10.96.0.1, clusterIPs: [10.96.0.1, 'fd00::1'], ports: [{port: 80}]}\n",
			want:     `apps.yaml: document 1: service apps/echo: spec.ipFamilyPolicy: invalid value "SingleStack": must be RequireDualStack or PreferDualStack when two cluster IPs are given`,
			field:    "spec.ipFamilyPolicy",
			wrapped:  ErrInvalid,
		},
		{
			name:     "missing name",
			manifest: "apiVersion: v1\nkind: Pod\nmetadata: {namespace: apps}\n",
			want:     `apps.yaml: document 1: pod: metadata.name: required`,
			field:    "metadata.name",
			wrapped:  ErrRequired,
		},
		{
			name:     "missing kind",
			manifest: "apiVersion: v1\nmetadata: {name: x}\n",
			want:     `apps.yaml: document 1: kind: required`,
			field:    "kind",
			wrapped:  ErrRequired,
		},
		{
			name:     "stored kind at a version no longer served",
			manifest: "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s, namespace: apps}\naddressType: IPv4\n",
			want:     `apps.yaml: document 1: endpointslice apps/s: apiVersion: invalid value "discovery.k8s.io/v1beta1": EndpointSlice is served as discovery.k8s.io/v1`,
			field:    "apiVersion",
			wrapped:  ErrInvalid,
		},
		{
			name:     "stored kind at a version never served",
			manifest: "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: Gateway\nmetadata: {name: east, namespace: istio-system}\n",
			want:     `apps.yaml: document 1: gateway istio-system/east: apiVersion: invalid value "gateway.networking.k8s.io/v1alpha2": Gateway is served as gateway.networking.k8s.io/v1 or gateway.networking.k8s.io/v1beta1`,
			field:    "apiVersion",
			wrapped:  ErrInvalid,
		},
		{
			name:     "misspelt kind",
			manifest: "apiVersion: v1\nkind: Servce\nmetadata: {name: echo, namespace: apps}\n",
			want:     `apps.yaml: document 1: servce apps/echo: kind: invalid value "Servce": not a kind of the core API group (apiVersion: v1) (did you mean Service?)`,
			field:    "kind",
			wrapped:  ErrInvalid,
		},
		{
			name:     "kind in the wrong group",
			manifest: "apiVersion: apps/v1\nkind: Service\nmetadata: {name: echo, namespace: apps}\n",
			want:     `apps.yaml: document 1: service apps/echo: kind: invalid value "Service": not a kind of API group apps (did you mean Service in apiVersion v1?)`,
			field:    "kind",
			wrapped:  ErrInvalid,
		},
		{
			name:     "misspelt group",
			manifest: "apiVersion: gateway.networking.k8s.oi/v1\nkind: Gateway\nmetadata: {name: east, namespace: istio-system}\n",
			want:     `apps.yaml: document 1: gateway istio-system/east: apiVersion: invalid value "gateway.networking.k8s.oi/v1": unknown API group "gateway.networking.k8s.oi" (did you mean "gateway.networking.k8s.io"?)`,
			field:    "apiVersion",
			wrapped:  ErrInvalid,
		},
		{
			name:     "items on a kind that is not a list",
			manifest: "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\nitems: []\n",
			want:     `apps.yaml: document 1: namespace apps: items: invalid value: unknown field`,
			field:    "items",
			wrapped:  ErrInvalid,
		},
		{
			name:     "list with a misspelt items field",
			manifest: "apiVersion: v1\nkind: ServiceList\nitems: []\nitem: [{metadata: {name: echo}}]\n",
			want:     `apps.yaml: document 1: servicelist: item: invalid value: unknown field`,
			field:    "item",
			wrapped:  ErrInvalid,
		},
		{
			name:     "list inside a list",
			manifest: "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: List, items: []}\n",
			want:     `apps.yaml: document 1: items[0]: list: items: invalid value: a list inside a list`,
			field:    "items",
			wrapped:  ErrInvalid,
		},
		{
			name:     "endpoint slice without address type",
			manifest: "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: apps}\nendpoints: [{addresses: [10.0.0.1]}]\n",
			want:     `apps.yaml: document 1: endpointslice apps/s: addressType: required: IPv4, IPv6 or FQDN`,
			field:    "addressType",
			wrapped:  ErrRequired,
		},
		{
			name:     "bad item in a List",
			manifest: "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: ok}}\n- {apiVersion: v1, kind: Service, metadata: {name: echo, namespace: apps}, spec: {ports: [{port: 80}]}}\n",
			want:     `apps.yaml: document 1: items[1]: service apps/echo: spec.clusterIP: required: a non-headless Service needs its cluster IP in the file (no API server allocates one here); use "None" for a headless Service`,
			field:    "spec.clusterIP",
			wrapped:  ErrRequired,
		},
		{
			name:     "same object twice in one file",
			manifest: "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n",
			want:     `apps.yaml: document 2: namespace apps: object defined more than once: also in document 1 of this file`,
			wrapped:  ErrConflict,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs, err := DecodeManifests("apps.yaml", []byte(c.manifest))
			if err == nil {
				t.Fatalf("no error; objects %v", objs)
			}
			if objs != nil {
				t.Errorf("objects returned alongside an error: %d", len(objs))
			}
			if err.Error() != c.want {
				t.Errorf("error:\n got %s\nwant %s", err, c.want)
			}
			var me *ManifestError
			if !errors.As(err, &me) {
				t.Fatalf("error %T is not a *ManifestError", err)
			}
			if me.Field != c.field {
				t.Errorf("Field = %q, want %q", me.Field, c.field)
			}
			if !errors.Is(err, c.wrapped) {
				t.Errorf("error does not wrap %v", c.wrapped)
			}
		})
	}
}

func TestSplitDocumentsCountsAsAReader(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []string
	}{
		{"single", "a: 1\n", []string{"a: 1\n"}},
		{"leading separator opens document 1", "---\na: 1\n", []string{"a: 1\n"}},
		{"leading comment is not a document", "# hi\n---\na: 1\n", []string{"a: 1\n"}},
		{"empty documents count", "a: 1\n---\n---\nb: 2\n", []string{"a: 1\n", "", "b: 2\n"}},
		{"separator with comment", "a: 1\n--- # next\nb: 2", []string{"a: 1\n", "b: 2"}},
		{"trailing separator adds nothing", "a: 1\n---\n", []string{"a: 1\n"}},
		{"dashes inside a line are content", "a: 1\n---b\n", []string{"a: 1\n---b\n"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			for _, d := range splitDocuments([]byte(c.in)) {
				got = append(got, string(d))
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeMalformedYAMLNamesTheDocument(t *testing.T) {
	_, err := DecodeManifests("apps.yaml", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\nkind: [unclosed\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "apps.yaml: document 2: malformed YAML: ") {
		t.Errorf("error = %v, want it to start with the file, document 2 and malformed YAML", err)
	}
}

func TestDecodeReportsEveryBadDocument(t *testing.T) {
	_, err := DecodeManifests("apps.yaml", []byte(`
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {clusterIP: 10.0.0.1, ports: [{port: 0}]}
`))
	var got []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var me *ManifestError
		if errors.As(e, &me) {
			got = append(got, me.Object+" "+me.Field)
		}
	}
	want := []string{"service default/a spec.clusterIP", "service default/b spec.ports[0].port"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}

// TestDecodeProjectExamples keeps the project's own manifest sets (what
// `make run` and the end-to-end tests serve) decodable.
func TestDecodeProjectExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/*/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no example manifests found under examples/")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeManifests(f, data); err != nil {
			t.Errorf("%v", err)
		}
	}
}

func TestEditDistance(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"service", "service", 0},
		{"service", "servce", 1},
		{"service", "sevrice", 1}, // neighbours swapped
		{"gateway.networking.k8s.io", "gateway.networking.k8s.oi", 1},
		{"", "pod", 3},
		{"node", "role", 2},
	}
	for _, c := range cases {
		if got := editDistance(c.a, c.b); got != c.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

// A null list item once panicked the decoder (found by FuzzDecodeManifests).
func TestDecodeNullListItem(t *testing.T) {
	_, err := DecodeManifests("apps.yaml", []byte("apiVersion: v1\nkind: List\nitems:\n-\n"))
	want := "apps.yaml: document 1: items[0]: not a Kubernetes object: a document must be a YAML mapping with apiVersion and kind"
	if err == nil || err.Error() != want {
		t.Errorf("error = %v, want %s", err, want)
	}
}
