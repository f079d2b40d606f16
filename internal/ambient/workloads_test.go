package ambient

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// runPod maps one pod against the other inputs, as Build does.
func runPod(cfg Config, in Inputs, p *corev1.Pod) (*workloadpb.Workload, []Warning) {
	var w warnings
	m := NewModel(cfg)
	m.Apply(in.changes())
	cfg, idx := m.cfg, m.idx
	w.list = m.Warnings()
	wl := podWorkload(podInput{cfg: cfg, idx: idx, pod: p}, &w)
	return wl, w.sorted()
}

func TestPodWorkload(t *testing.T) {
	tests := []struct {
		name     string
		cfg      *Config // nil: testConfig
		in       Inputs
		pod      *corev1.Pod
		want     *workloadpb.Workload
		warnings []Warning
	}{
		{
			name: "uid is <cluster>//Pod/<ns>/<name>; plain pod is not HBONE",
			pod:  pod("apps", "echo"),
			want: wantPod("apps", "echo", nil),
		},
		{
			name: "captured by the CNI (redirection annotation) is HBONE",
			pod:  pod("apps", "echo", captured()),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.TunnelProtocol = workloadpb.TunnelProtocol_HBONE }),
		},
		{
			name: "dataplane-mode label alone (namespace or pod) does not make HBONE",
			in: Inputs{Namespaces: []*corev1.Namespace{
				namespace("apps", map[string]string{"istio.io/dataplane-mode": "ambient"}, nil),
			}},
			pod:  pod("apps", "echo", podLabels("istio.io/dataplane-mode", "ambient")),
			want: wantPod("apps", "echo", nil),
		},
		{
			name: "redirection annotation with another value is not HBONE",
			pod:  pod("apps", "echo", podAnnotations(annotationAmbientRedirection, "disabled")),
			want: wantPod("apps", "echo", nil),
		},
		{
			name: "tunnel label listing http is HBONE with native tunnel",
			pod:  pod("apps", "echo", podLabels(labelTunnel, "tcp,http")),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) {
				w.TunnelProtocol = workloadpb.TunnelProtocol_HBONE
				w.NativeTunnel = true
			}),
		},
		{
			name: "every pod IP, in status order (dual stack)",
			pod:  pod("apps", "echo", podIPs("10.0.0.1", "fd00::1")),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.Addresses = [][]byte{ip("10.0.0.1"), ip("fd00::1")} }),
		},
		{
			name: "status.podIP is used when status.podIPs is empty",
			pod: pod("apps", "echo", func(p *corev1.Pod) {
				p.Status.PodIPs = nil
				p.Status.PodIP = "10.0.0.7"
			}),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.Addresses = [][]byte{ip("10.0.0.7")} }),
		},
		{
			name: "pod without an IP is dropped",
			pod:  pod("apps", "echo", podIPs(), podPhase(corev1.PodPending)),
			want: nil,
		},
		{
			name: "pending pod with an IP is published",
			pod:  pod("apps", "echo", podPhase(corev1.PodPending), podReadyStatus(corev1.ConditionFalse)),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.Status = workloadpb.WorkloadStatus_UNHEALTHY }),
		},
		{
			name: "succeeded pod is dropped",
			pod:  pod("apps", "echo", podPhase(corev1.PodSucceeded)),
			want: nil,
		},
		{
			name: "failed pod is dropped",
			pod:  pod("apps", "echo", podPhase(corev1.PodFailed)),
			want: nil,
		},
		{
			name: "invalid pod IP drops the pod with a warning",
			pod:  pod("apps", "echo", podIPs("10.0.0.1", "not-an-ip")),
			want: nil,
			warnings: []Warning{{Object: ObjectRef{Kind: "pod", Namespace: "apps", Name: "echo"}, Field: "status.podIPs[1]",
				Message: `invalid IP "not-an-ip": workload not published`}},
		},
		{
			name: "not Ready is UNHEALTHY",
			pod:  pod("apps", "echo", podReadyStatus(corev1.ConditionFalse)),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.Status = workloadpb.WorkloadStatus_UNHEALTHY }),
		},
		{
			name: "no Ready condition is UNHEALTHY",
			pod:  pod("apps", "echo", func(p *corev1.Pod) { p.Status.Conditions = nil }),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.Status = workloadpb.WorkloadStatus_UNHEALTHY }),
		},
		{
			name: "terminating (deletionTimestamp) Ready pod is UNHEALTHY",
			pod:  pod("apps", "echo", terminating()),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.Status = workloadpb.WorkloadStatus_UNHEALTHY }),
		},
		{
			name: "host network pod has network_mode HOST_NETWORK",
			pod:  pod("apps", "echo", hostNetwork()),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.NetworkMode = workloadpb.NetworkMode_HOST_NETWORK }),
		},
		{
			name: "service account and node are copied",
			in:   Inputs{Nodes: []*corev1.Node{node("n1")}},
			pod:  pod("apps", "echo", serviceAccount("echo-sa"), onNode("n1")),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) {
				w.ServiceAccount = "echo-sa"
				w.Node = "n1"
			}),
		},
		{
			name: "locality from the node's region, zone and subzone labels",
			in: Inputs{Nodes: []*corev1.Node{node("n1",
				corev1.LabelTopologyRegion, "eu", corev1.LabelTopologyZone, "eu-1", labelTopologySubzone, "rack7")}},
			pod: pod("apps", "echo", onNode("n1")),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) {
				w.Node = "n1"
				w.Locality = &workloadpb.Locality{Region: "eu", Zone: "eu-1", Subzone: "rack7"}
			}),
		},
		{
			name: "locality with only a zone",
			in:   Inputs{Nodes: []*corev1.Node{node("n1", corev1.LabelTopologyZone, "z")}},
			pod:  pod("apps", "echo", onNode("n1")),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) {
				w.Node = "n1"
				w.Locality = &workloadpb.Locality{Zone: "z"}
			}),
		},
		{
			name: "node without topology labels gives no locality",
			in:   Inputs{Nodes: []*corev1.Node{node("n1", "kubernetes.io/hostname", "n1")}},
			pod:  pod("apps", "echo", onNode("n1")),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.Node = "n1" }),
		},
		{
			name: "unknown node gives no locality and a warning",
			pod:  pod("apps", "echo", onNode("ghost")),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.Node = "ghost" }),
			warnings: []Warning{{Object: ObjectRef{Kind: "pod", Namespace: "apps", Name: "echo"}, Field: "spec.nodeName",
				Message: `node "ghost" not found: locality unknown`}},
		},
		{
			name: "network from the system namespace label when no network is configured",
			cfg:  &Config{ClusterID: testCluster},
			in: Inputs{Namespaces: []*corev1.Namespace{
				namespace("istio-system", map[string]string{labelTopologyNetwork: "from-label"}, nil),
				namespace("apps", map[string]string{labelTopologyNetwork: "ignored"}, nil),
			}},
			pod:  pod("apps", "echo", podLabels(labelTopologyNetwork, "ignored-too")),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.Network = "from-label" }),
		},
		{
			name: "network from a custom system namespace",
			cfg:  &Config{ClusterID: testCluster, SystemNamespace: "mesh"},
			in: Inputs{Namespaces: []*corev1.Namespace{
				namespace("istio-system", map[string]string{labelTopologyNetwork: "wrong"}, nil),
				namespace("mesh", map[string]string{labelTopologyNetwork: "right"}, nil),
			}},
			pod:  pod("apps", "echo"),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.Network = "right" }),
		},
		{
			name: "configured network wins over the label",
			in: Inputs{Namespaces: []*corev1.Namespace{
				namespace("istio-system", map[string]string{labelTopologyNetwork: "from-label"}, nil),
			}},
			pod:  pod("apps", "echo"),
			want: wantPod("apps", "echo", nil),
		},
		{
			name: "no network configured and no label is the empty network",
			cfg:  &Config{ClusterID: testCluster},
			pod:  pod("apps", "echo"),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.Network = "" }),
		},
		{
			name: "trust domain other than cluster.local is sent",
			cfg:  &Config{ClusterID: testCluster, Network: "net1", TrustDomain: "c1.local"},
			pod:  pod("apps", "echo"),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) { w.TrustDomain = "c1.local" }),
		},
		{
			name: "trust domain cluster.local is sent empty",
			cfg:  &Config{ClusterID: testCluster, Network: "net1", TrustDomain: "cluster.local"},
			pod:  pod("apps", "echo"),
			want: wantPod("apps", "echo", nil),
		},
		{
			name: "ReplicaSet pod is named for its Deployment",
			pod:  pod("apps", "echo-7d9f-x2", ownedBy("ReplicaSet", "echo-7d9f"), podLabels("pod-template-hash", "7d9f")),
			want: wantPod("apps", "echo-7d9f-x2", func(w *workloadpb.Workload) {
				w.WorkloadName, w.CanonicalName = "echo", "echo"
			}),
		},
		{
			name: "ReplicaSet pod without the template hash is named for the ReplicaSet",
			pod:  pod("apps", "echo-rs-x2", ownedBy("ReplicaSet", "echo-rs")),
			want: wantPod("apps", "echo-rs-x2", func(w *workloadpb.Workload) {
				w.WorkloadName, w.CanonicalName = "echo-rs", "echo-rs"
			}),
		},
		{
			name: "Argo Rollout pod is named for its Rollout",
			pod:  pod("apps", "ro-abc-x2", ownedBy("ReplicaSet", "ro-abc"), podLabels("rollouts-pod-template-hash", "abc")),
			want: wantPod("apps", "ro-abc-x2", func(w *workloadpb.Workload) {
				w.WorkloadName, w.CanonicalName = "ro", "ro"
			}),
		},
		{
			name: "CronJob's Job pod is named for the CronJob",
			pod:  pod("apps", "backup-28000000-x2", ownedBy("Job", "backup-28000000")),
			want: wantPod("apps", "backup-28000000-x2", func(w *workloadpb.Workload) {
				w.WorkloadName, w.CanonicalName = "backup", "backup"
			}),
		},
		{
			name: "plain Job pod is named for the Job",
			pod:  pod("apps", "once-x2", ownedBy("Job", "once")),
			want: wantPod("apps", "once-x2", func(w *workloadpb.Workload) {
				w.WorkloadName, w.CanonicalName = "once", "once"
			}),
		},
		{
			name: "StatefulSet pod is named for the StatefulSet",
			pod:  pod("apps", "db-0", ownedBy("StatefulSet", "db")),
			want: wantPod("apps", "db-0", func(w *workloadpb.Workload) {
				w.WorkloadName, w.CanonicalName = "db", "db"
			}),
		},
		{
			name: "owner without a generated pod name is ignored",
			pod:  pod("apps", "solo", ownedBy("StatefulSet", "db"), func(p *corev1.Pod) { p.GenerateName = "" }),
			want: wantPod("apps", "solo", nil),
		},
		{
			name: "workload-name label overrides the derived name",
			pod:  pod("apps", "echo-7d9f-x2", ownedBy("ReplicaSet", "echo-7d9f"), podLabels("pod-template-hash", "7d9f", labelWorkloadName, "custom")),
			want: wantPod("apps", "echo-7d9f-x2", func(w *workloadpb.Workload) {
				w.WorkloadName, w.CanonicalName = "custom", "custom"
			}),
		},
		{
			name: "canonical name and revision from app/version labels",
			pod:  pod("apps", "echo", podLabels("app", "echo-app", "version", "v2")),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) {
				w.CanonicalName, w.CanonicalRevision = "echo-app", "v2"
			}),
		},
		{
			name: "canonical labels win over app.kubernetes.io labels, which win over app/version",
			pod: pod("apps", "echo", podLabels(
				"app", "a", "version", "v",
				"app.kubernetes.io/name", "k", "app.kubernetes.io/version", "kv",
				"service.istio.io/canonical-name", "c", "service.istio.io/canonical-revision", "cv")),
			want: wantPod("apps", "echo", func(w *workloadpb.Workload) {
				w.CanonicalName, w.CanonicalRevision = "c", "cv"
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig
			if tt.cfg != nil {
				cfg = *tt.cfg
			}
			got, warns := runPod(cfg, tt.in, tt.pod)
			diffProto(t, tt.want, got)
			diffWarnings(t, tt.warnings, warns)
		})
	}
}

func TestPodServices(t *testing.T) {
	echo := func(opts ...svcOpt) *corev1.Service {
		return service("apps", "echo", append([]svcOpt{selector("app", "echo")}, opts...)...)
	}
	const echoKey = "apps/echo.apps.svc.cluster.local"
	tests := []struct {
		name string
		in   Inputs
		pod  *corev1.Pod
		want map[string]*workloadpb.PortList
	}{
		{
			name: "selector matching the pod's labels adds the service with numeric target ports in Service order",
			in:   Inputs{Services: []*corev1.Service{echo(svcPorts(sport("http", 80, 8080), sport("grpc", 90, 9090)))}},
			pod:  pod("apps", "e1", podLabels("app", "echo", "extra", "x")),
			want: map[string]*workloadpb.PortList{echoKey: ports(80, 8080, 90, 9090)},
		},
		{
			name: "selector not matching adds nothing",
			in:   Inputs{Services: []*corev1.Service{echo(svcPorts(sport("http", 80, 8080)))}},
			pod:  pod("apps", "e1", podLabels("app", "other")),
			want: nil,
		},
		{
			name: "selector in another namespace adds nothing",
			in:   Inputs{Services: []*corev1.Service{echo(svcPorts(sport("http", 80, 8080)))}},
			pod:  pod("other", "e1", podLabels("app", "echo")),
			want: nil,
		},
		{
			name: "service without selector does not select by labels",
			in:   Inputs{Services: []*corev1.Service{service("apps", "echo", svcPorts(sport("http", 80, 8080)))}},
			pod:  pod("apps", "e1", podLabels("app", "echo")),
			want: nil,
		},
		{
			name: "ExternalName service is never a pod's service",
			in: Inputs{Services: []*corev1.Service{echo(svcPorts(sport("http", 80, 8080)), func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeExternalName
			})}},
			pod:  pod("apps", "e1", podLabels("app", "echo")),
			want: nil,
		},
		{
			name: "named target port resolves to the pod's TCP container port",
			in:   Inputs{Services: []*corev1.Service{echo(svcPorts(namedPort("http", 80, "web")))}},
			pod:  pod("apps", "e1", podLabels("app", "echo"), containerPorts(tcpPort("web", 8081))),
			want: map[string]*workloadpb.PortList{echoKey: ports(80, 8081)},
		},
		{
			name: "named target port resolves per pod",
			in:   Inputs{Services: []*corev1.Service{echo(svcPorts(namedPort("http", 80, "web")))}},
			pod:  pod("apps", "e2", podLabels("app", "echo"), containerPorts(tcpPort("web", 9999))),
			want: map[string]*workloadpb.PortList{echoKey: ports(80, 9999)},
		},
		{
			name: "named target port the pod lacks leaves that port out",
			in:   Inputs{Services: []*corev1.Service{echo(svcPorts(namedPort("http", 80, "web"), sport("tcp", 81, 8181)))}},
			pod:  pod("apps", "e1", podLabels("app", "echo")),
			want: map[string]*workloadpb.PortList{echoKey: ports(81, 8181)},
		},
		{
			name: "named target port only matches TCP container ports",
			in:   Inputs{Services: []*corev1.Service{echo(svcPorts(namedPort("dns", 53, "dns")))}},
			pod: pod("apps", "e1", podLabels("app", "echo"),
				containerPorts(corev1.ContainerPort{Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP})),
			want: map[string]*workloadpb.PortList{echoKey: ports()},
		},
		{
			name: "named target port found on a native sidecar, not on a plain init container",
			in:   Inputs{Services: []*corev1.Service{echo(svcPorts(namedPort("a", 80, "side"), namedPort("b", 81, "init")))}},
			pod: pod("apps", "e1", podLabels("app", "echo"),
				sidecarPorts(true, tcpPort("side", 7070)), sidecarPorts(false, tcpPort("init", 7171))),
			want: map[string]*workloadpb.PortList{echoKey: ports(80, 7070)},
		},
		{
			name: "selector-less service gets the pod its EndpointSlice names as targetRef",
			in: Inputs{
				Services: []*corev1.Service{service("apps", "manual", svcPorts(sport("http", 80, 8080)))},
				EndpointSlices: []*discoveryv1.EndpointSlice{slice("apps", "manual-1", "manual",
					endpoint("10.0.0.1", targetRef("Pod", "apps", "e1", "uid-1")), slicePort("http", 8080, corev1.ProtocolTCP))},
			},
			pod:  pod("apps", "e1", podUIDOpt("uid-1")),
			want: map[string]*workloadpb.PortList{"apps/manual.apps.svc.cluster.local": ports(80, 8080)},
		},
		{
			name: "targetRef with another uid does not match the pod",
			in: Inputs{
				Services: []*corev1.Service{service("apps", "manual", svcPorts(sport("http", 80, 8080)))},
				EndpointSlices: []*discoveryv1.EndpointSlice{slice("apps", "manual-1", "manual",
					endpoint("10.0.0.1", targetRef("Pod", "apps", "e1", "old-uid")))},
			},
			pod:  pod("apps", "e1", podUIDOpt("uid-1")),
			want: nil,
		},
		{
			name: "slice naming the pod for an already selecting service adds it once",
			in: Inputs{
				Services: []*corev1.Service{echo(svcPorts(sport("http", 80, 8080)))},
				EndpointSlices: []*discoveryv1.EndpointSlice{slice("apps", "echo-1", "echo",
					endpoint("10.0.0.1", targetRef("Pod", "apps", "e1", "")))},
			},
			pod:  pod("apps", "e1", podLabels("app", "echo")),
			want: map[string]*workloadpb.PortList{echoKey: ports(80, 8080)},
		},
		{
			name: "slice of a missing service adds nothing",
			in: Inputs{EndpointSlices: []*discoveryv1.EndpointSlice{slice("apps", "gone-1", "gone",
				endpoint("10.0.0.1", targetRef("Pod", "apps", "e1", "")))}},
			pod:  pod("apps", "e1"),
			want: nil,
		},
		{
			name: "two services select the pod",
			in: Inputs{Services: []*corev1.Service{
				echo(svcPorts(sport("http", 80, 8080))),
				service("apps", "all", selector("tier", "web"), svcPorts(sport("tcp", 5000, 5000))),
			}},
			pod: pod("apps", "e1", podLabels("app", "echo", "tier", "web")),
			want: map[string]*workloadpb.PortList{
				echoKey:                           ports(80, 8080),
				"apps/all.apps.svc.cluster.local": ports(5000, 5000),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := runPod(testConfig, tt.in, tt.pod)
			if got == nil {
				t.Fatal("pod not published")
			}
			diffProto(t, tt.want, got.Services)
		})
	}
}
