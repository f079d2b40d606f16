package discovery

import (
	"errors"
	"strings"
	"testing"
)

// TestDecodeTrafficDistributionAsTheAPIServer: spec.trafficDistribution
// takes Kubernetes' values only; peerd's own (PreferNetwork, PreferRegion,
// Any) belong in the annotation, and the error says so.
func TestDecodeTrafficDistributionAsTheAPIServer(t *testing.T) {
	svc := func(td string) string {
		return "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: apps}\n" +
			"spec: {clusterIP: 10.96.0.1, ports: [{port: 80}], trafficDistribution: " + td + "}\n"
	}
	for _, ok := range []string{"PreferClose", "PreferSameZone", "PreferSameNode"} {
		if _, err := DecodeManifests("apps.yaml", []byte(svc(ok))); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"PreferNetwork", "PreferRegion", "Any", "preferclose", `""`} {
		_, err := DecodeManifests("apps.yaml", []byte(svc(bad)))
		value := strings.Trim(bad, `"`)
		want := `apps.yaml: document 1: service apps/echo: spec.trafficDistribution: invalid value "` + value + `": ` +
			`the API server accepts only PreferClose, PreferSameZone, PreferSameNode; ` +
			`PreferNetwork, PreferRegion and Any are set with the networking.istio.io/traffic-distribution annotation`
		if err == nil || err.Error() != want {
			t.Errorf("%s:\n got %v\nwant %s", bad, err, want)
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: error does not wrap ErrInvalid", bad)
		}
	}
}

// TestDecodeRefusesWhatTheAPIServerRefuses: one row per check, each the
// smallest manifest the API server would refuse for that field. Every error
// must name the field and say why.
func TestDecodeRefusesWhatTheAPIServerRefuses(t *testing.T) {
	const (
		svc   = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: apps}\n"
		pod   = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: apps\n"
		slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: apps}\n"
	)
	cases := []struct {
		name     string
		manifest string
		field    string
		why      string
	}{
		// Metadata, for every kind.
		{"service name not a DNS-1035 label", "apiVersion: v1\nkind: Service\nmetadata: {name: 9lives, namespace: apps}\nspec: {clusterIP: None}\n",
			"metadata.name", "DNS-1035 label"},
		{"namespace name with a dot", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n", "metadata.name", "must not contain dots"},
		{"bad namespace of an object", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: Apps}\n", "metadata.namespace", "RFC 1123 label"},
		{"label value too long", "apiVersion: v1\nkind: Node\nmetadata: {name: node-1, labels: {topology.kubernetes.io/zone: " + strings.Repeat("z", 64) + "}}\n",
			"metadata.labels", "63"},
		{"annotation key with a space", pod + "  annotations: {'ambient.istio.io/redi rection': enabled}\n", "metadata.annotations", "name part"},
		{"owner reference without uid", pod + "  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: rs, controller: true}]\n",
			"metadata.ownerReferences[0].uid", "must not be empty"},
		{"two controllers", pod + "  ownerReferences:\n  - {apiVersion: apps/v1, kind: ReplicaSet, name: a, uid: '1', controller: true}\n" +
			"  - {apiVersion: batch/v1, kind: Job, name: b, uid: '2', controller: true}\n", "metadata.ownerReferences", "Only one reference"},

		// Service.
		{"port name not a DNS label", svc + "spec: {clusterIP: 10.96.0.1, ports: [{name: HTTP, port: 80}]}\n", "spec.ports[0].name", "RFC 1123 label"},
		{"duplicate port name", svc + "spec: {clusterIP: 10.96.0.1, ports: [{name: a, port: 80}, {name: a, port: 81}]}\n",
			"spec.ports[1].name", "duplicate port name"},
		{"unknown protocol", svc + "spec: {clusterIP: 10.96.0.1, ports: [{port: 80, protocol: tcp}]}\n", "spec.ports[0].protocol", "TCP, UDP or SCTP"},
		{"named targetPort too long", svc + "spec: {clusterIP: 10.96.0.1, ports: [{port: 80, targetPort: a-very-long-port-name}]}\n",
			"spec.ports[0].targetPort", "15"},
		{"bad appProtocol", svc + "spec: {clusterIP: 10.96.0.1, ports: [{port: 80, appProtocol: 'h t t p'}]}\n", "spec.ports[0].appProtocol", "name part"},
		{"same port and protocol twice", svc + "spec: {clusterIP: 10.96.0.1, ports: [{name: a, port: 80}, {name: b, port: 80}]}\n",
			"spec.ports[1]", "duplicate port and protocol"},
		{"no ports on a ClusterIP Service", svc + "spec: {clusterIP: 10.96.0.1}\n", "spec.ports", "needs a port"},
		{"bad selector value", svc + "spec: {clusterIP: None, selector: {app: 'a b'}}\n", "spec.selector", "valid label"},
		{"unknown internal traffic policy", svc + "spec: {clusterIP: 10.96.0.1, ports: [{port: 80}], internalTrafficPolicy: Node}\n",
			"spec.internalTrafficPolicy", "Cluster or Local"},
		{"ExternalName with a cluster IP", svc + "spec: {type: ExternalName, externalName: example.com, clusterIP: 10.96.0.1}\n",
			"spec.clusterIP", "ExternalName"},
		{"ExternalName without a name", svc + "spec: {type: ExternalName}\n", "spec.externalName", "required"},
		{"ExternalName not a DNS name", svc + "spec: {type: ExternalName, externalName: 'exa mple.com'}\n", "spec.externalName", "RFC 1123 subdomain"},
		{"IPv4-mapped cluster IP", svc + "spec: {clusterIP: '::ffff:10.96.0.1', ports: [{port: 80}]}\n", "spec.clusterIP", "IPv4-mapped"},

		// Pod.
		{"service account not a DNS subdomain", pod + "spec: {serviceAccountName: My_SA}\n", "spec.serviceAccountName", "RFC 1123 subdomain"},
		{"node name not a DNS subdomain", pod + "spec: {nodeName: Node_1}\n", "spec.nodeName", "RFC 1123 subdomain"},
		{"container port name too long", pod + "spec: {containers: [{name: c, ports: [{name: a-very-long-port-name, containerPort: 80}]}]}\n",
			"spec.containers[0].ports[0].name", "15"},
		{"duplicate container port name", pod + "spec: {containers: [{name: c, ports: [{name: web, containerPort: 80}, {name: web, containerPort: 81}]}]}\n",
			"spec.containers[0].ports[1].name", "duplicate"},
		{"init container port protocol", pod + "spec: {initContainers: [{name: c, ports: [{containerPort: 80, protocol: HTTP}]}]}\n",
			"spec.initContainers[0].ports[0].protocol", "TCP, UDP or SCTP"},
		{"two pod IPs of one family", pod + "status: {podIPs: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]}\n", "status.podIPs", "one IP of each family"},
		{"three pod IPs", pod + "status: {podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}, {ip: 'fd00::2'}]}\n", "status.podIPs", "one IP of each family"},
		{"IPv4-mapped pod IP", pod + "status: {podIP: '::ffff:10.0.0.1'}\n", "status.podIPs[0].ip", "IPv4-mapped"},
		{"pod IP with leading zeros", pod + "status: {podIP: 10.0.0.01}\n", "status.podIPs[0].ip", "not an IP address"},

		// EndpointSlice.
		{"slice port name not a DNS label", slice + "addressType: IPv4\nports: [{name: Web, port: 80}]\n", "ports[0].name", "RFC 1123 label"},
		{"two unnamed slice ports", slice + "addressType: IPv4\nports: [{port: 80}, {port: 81}]\n", "ports[1].name", "duplicate port name"},
		{"slice port protocol", slice + "addressType: IPv4\nports: [{port: 80, protocol: QUIC}]\n", "ports[0].protocol", "TCP, UDP or SCTP"},
		{"loopback endpoint", slice + "addressType: IPv4\nendpoints: [{addresses: [127.0.0.1]}]\n", "endpoints[0].addresses[0]", "loopback"},
		{"link-local endpoint", slice + "addressType: IPv6\nendpoints: [{addresses: ['fe80::1']}]\n", "endpoints[0].addresses[0]", "link-local"},
		{"unspecified endpoint", slice + "addressType: IPv4\nendpoints: [{addresses: [0.0.0.0]}]\n", "endpoints[0].addresses[0]", "unspecified"},
		{"IPv6 endpoint not canonical", slice + "addressType: IPv6\nendpoints: [{addresses: ['FD00:0::1']}]\n", "endpoints[0].addresses[0]", "canonical form (fd00::1)"},
		{"endpoint of the other family", slice + "addressType: IPv6\nendpoints: [{addresses: [10.0.0.1]}]\n", "endpoints[0].addresses[0]", "not an IPv6 address"},
		{"endpoint without address", slice + "addressType: IPv4\nendpoints: [{addresses: []}]\n", "endpoints[0].addresses", "at least one address"},
		{"FQDN endpoint not a name", slice + "addressType: FQDN\nendpoints: [{addresses: ['not a name']}]\n", "endpoints[0].addresses[0]", "RFC 1123 subdomain"},

		// Gateway.
		{"duplicate listener name", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: istio-system}\n" +
			"spec: {gatewayClassName: istio-remote, listeners: [{name: a, port: 15008, protocol: HBONE}, {name: a, port: 15012, protocol: TLS}]}\n",
			"spec.listeners[1].name", "unique"},
		{"gateway IP address not an IP", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: istio-system}\n" +
			"spec: {gatewayClassName: istio-remote, addresses: [{value: east.example.com}], listeners: [{name: a, port: 15008, protocol: HBONE}]}\n",
			"spec.addresses[0].value", "not an IP address"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs, err := DecodeManifests("m.yaml", []byte(c.manifest))
			if err == nil {
				t.Fatalf("accepted; objects %v", objs)
			}
			var me *ManifestError
			if !errors.As(err, &me) {
				t.Fatalf("error %T is not a *ManifestError: %v", err, err)
			}
			if me.Field != c.field {
				t.Errorf("Field = %q, want %q (error: %v)", me.Field, c.field, err)
			}
			if !strings.Contains(me.Err.Error(), c.why) {
				t.Errorf("error %q does not say %q", me.Err, c.why)
			}
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrRequired) {
				t.Errorf("error wraps neither ErrInvalid nor ErrRequired: %v", err)
			}
		})
	}
}

// TestDecodeAcceptsWhatTheAPIServerAccepts guards against validation that is
// stricter than the API server's.
func TestDecodeAcceptsWhatTheAPIServerAccepts(t *testing.T) {
	_, err := DecodeManifests("m.yaml", []byte(`
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: apps}
spec:
  clusterIP: 10.96.0.1
  clusterIPs: [10.96.0.1, "fd00::1"]
  ipFamilyPolicy: PreferDualStack
  selector: {app.kubernetes.io/name: echo}
  ports:
  - {name: http, port: 80, targetPort: http-web, appProtocol: kubernetes.io/h2c}
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: apps}
spec: {clusterIP: None}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: apps}
spec: {type: ExternalName, externalName: db.example.com.}
---
apiVersion: v1
kind: Pod
metadata: {name: p.0, namespace: apps}
spec:
  serviceAccountName: echo.sa
  nodeName: node-1.example
  containers:
  - {name: a, ports: [{name: http-web, containerPort: 8080}]}
  - {name: b, ports: [{name: http-web, containerPort: 8081}]}
status:
  podIPs: [{ip: "fd00::5"}, {ip: 10.0.0.5}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s, namespace: apps}
addressType: IPv6
ports: [{name: "", port: 80}, {name: web, port: 8080}]
endpoints: [{addresses: ["fd00::7"]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: f, namespace: apps}
addressType: FQDN
endpoints: [{addresses: [db.example.com]}]
`))
	if err != nil {
		t.Fatal(err)
	}
}
