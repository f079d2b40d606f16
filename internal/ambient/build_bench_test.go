package ambient

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// BenchmarkBuild measures one full rebuild of the model, which peerd runs
// for every coalesced batch of index changes: 10 pods per service, spread
// over 10 namespaces and 10 nodes, every pod captured and ready.
func BenchmarkBuild(b *testing.B) {
	for _, pods := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("pods=%d", pods), func(b *testing.B) {
			in := benchInputs(pods)
			b.ReportAllocs()
			for b.Loop() {
				out := Build(testConfig, in)
				if len(out.Addresses) != pods+pods/10 {
					b.Fatalf("built %d addresses, want %d", len(out.Addresses), pods+pods/10)
				}
			}
		})
	}
}

func benchInputs(pods int) Inputs {
	var in Inputs
	for n := range 10 {
		in.Namespaces = append(in.Namespaces, namespace(fmt.Sprintf("ns-%d", n), nil, nil))
		in.Nodes = append(in.Nodes, node(fmt.Sprintf("node-%d", n), "topology.kubernetes.io/region", "r1", "topology.kubernetes.io/zone", fmt.Sprintf("z%d", n%3)))
	}
	for s := range pods / 10 {
		ns := fmt.Sprintf("ns-%d", s%10)
		app := fmt.Sprintf("app-%d", s)
		in.Services = append(in.Services, service(ns, app, selector("app", app),
			clusterIPs(fmt.Sprintf("10.96.%d.%d", s/250, s%250+1)),
			svcPorts(namedPort("http", 80, "http"), sport("grpc", 9090, 9090))))
		for p := range 10 {
			i := s*10 + p
			in.Pods = append(in.Pods, pod(ns, fmt.Sprintf("%s-%d", app, p), captured(), podLabels("app", app),
				onNode(fmt.Sprintf("node-%d", i%10)), podIPs(fmt.Sprintf("10.%d.%d.%d", i/62500, i/250%250, i%250+1)),
				containerPorts(tcpPort("http", 8080), corev1.ContainerPort{ContainerPort: 9090, Protocol: corev1.ProtocolTCP})))
		}
	}
	return in
}
