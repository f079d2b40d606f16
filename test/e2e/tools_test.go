package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
)

const adsService = "envoy.service.discovery.v3.AggregatedDiscoveryService"

func TestReflectionListsTheDiscoveryService(t *testing.T) {
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1")}})

	// The protocol itself, as any reflection client uses it.
	conn, err := grpc.NewClient(p.PlaintextAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	if !strings.Contains(strings.Join(names, " "), adsService) {
		t.Fatalf("reflection lists %v, want %s", names, adsService)
	}

	// And grpcurl, as the README tells operators to run it.
	grpcurl := findTool(t, "grpcurl")
	out, err := exec.Command(grpcurl, "-plaintext", p.PlaintextAddr, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), adsService) {
		t.Fatalf("grpcurl -plaintext %s list: %v\n%s", p.PlaintextAddr, err, out)
	}
	out, err = exec.Command(grpcurl, "-plaintext", p.PlaintextAddr, "describe", "istio.workload.Workload").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "network_gateway") {
		t.Fatalf("grpcurl describe istio.workload.Workload: %v\n%s", err, out)
	}
}

func TestViewShowsWhatZtunnelReceives(t *testing.T) {
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1")}})
	out, err := exec.Command(peerdBinary, "view", "all", "--addr", p.PlaintextAddr).CombinedOutput()
	if err != nil {
		t.Fatalf("peerd view all: %v\n%s", err, out)
	}
	for _, want := range []string{"echo.apps.svc.cluster.local", "network1/10.96.0.10", "echo-7d9f8b6c4d-abcde", "UNHEALTHY", "us-east"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("peerd view all does not show %q:\n%s", want, out)
		}
	}
}

// findTool returns the path of an installed tool (PATH, then GOPATH/bin). A
// missing tool skips the test on a developer machine and fails it in CI
// (PEERD_E2E_TOOLS_REQUIRED=1), where .ci/run installs it.
func findTool(t *testing.T, name string) string {
	t.Helper()
	if path, err := exec.LookPath(name); err == nil {
		return path
	}
	if gopath, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		path := filepath.Join(strings.TrimSpace(string(gopath)), "bin", name)
		if _, err := os.Stat(path); err == nil {
			return path
		}
	}
	if os.Getenv("PEERD_E2E_TOOLS_REQUIRED") != "" {
		t.Fatalf("%s is not installed; run `make tools`", name)
	}
	t.Skipf("%s is not installed; `make tools` installs it", name)
	return ""
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
