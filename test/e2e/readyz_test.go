package e2e

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	kubeharness "github.com/peerd-mesh/peerd/test/kube"
)

// readyzRecovery bounds the wait for /readyz to turn ready after a cause is
// fixed: client-go's reflector retries with a backoff that reaches several
// seconds, on top of a loaded machine.
const readyzRecovery = 90 * time.Second

// peerdRules is what peerd's ClusterRole grants in deploy/ (read the
// kinds it watches, write Events), minus whatever a test leaves out.
func peerdRules(without string) []rbacv1.PolicyRule {
	read := []string{"get", "list", "watch"}
	core := []string{"namespaces", "nodes", "pods", "services"}
	var kept []string
	for _, r := range core {
		if r != without {
			kept = append(kept, r)
		}
	}
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: kept, Verbs: read},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gateways"}, Verbs: read},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		// Link states and VIPs (docs/federation.md); a Role in the system
		// namespace is all peerd needs, granted cluster-wide here for brevity.
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "create", "update", "delete"}},
		// The mesh config, the Lease and the links' live state
		// (docs/kubernetes.md), also namespaced there.
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}},
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gateways/status"}, Verbs: []string{"patch"}},
	}
}

// TestReadyzNamesTheKindRBACForbids runs peerd under a service account whose
// ClusterRole lacks pods: /readyz must fail naming pods, the verb and
// "forbidden"; once the role grants pods, peerd syncs and the reason is gone.
func TestReadyzNamesTheKindRBACForbids(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	ctx := withTimeout(t, 3*time.Minute)
	const ns, name = "peerd-system", "peerd"
	if _, err := kube.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	roles := kube.Kube.RbacV1().ClusterRoles()
	role, err := roles.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: peerdRules("pods")}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.Kube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token, err := kube.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := kube.KubeconfigForToken(name, token.Status.Token)
	if err != nil {
		t.Fatal(err)
	}

	p := startPeerd(t, peerdOptions{NoWait: true, Args: []string{"--cluster-name", cluster, "--kubeconfig", kubeconfig}})
	body := waitReadyz(t, p, waitTimeout, http.StatusServiceUnavailable, "pods: forbidden", "list pods", "sources: not synced yet")
	t.Logf("/readyz while pods are forbidden:\n%s", body)
	for _, allowed := range []string{"nodes:", "services:", "namespaces:", "endpointslices:", "gateways:"} {
		if strings.Contains(body, allowed) {
			t.Errorf("/readyz reports a problem with a resource peerd may read (%s):\n%s", allowed, body)
		}
	}

	role.Rules = peerdRules("")
	if _, err := roles.Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	body = waitReadyz(t, p, readyzRecovery, http.StatusOK, "sources: synced")
	if strings.Contains(body, "forbidden") {
		t.Errorf("/readyz still says forbidden after the role grants pods:\n%s", body)
	}
	checkStructuredLogs(t, p.Logs())
}

// TestReadyzSaysTheAPIServerIsUnreachable: an API server that refuses
// connections, or whose certificate peerd cannot verify, keeps peerd
// unready with "unreachable" and the cause. No cluster is needed.
func TestReadyzSaysTheAPIServerIsUnreachable(t *testing.T) {
	untrusted := httptest.NewUnstartedServer(http.NotFoundHandler())
	// Its handshake failures are the point; they need not be printed.
	untrusted.Config.ErrorLog = log.New(io.Discard, "", 0)
	untrusted.StartTLS()
	t.Cleanup(untrusted.Close)
	tests := []struct {
		name   string
		server string
		cause  string
	}{
		{"connection refused", "https://" + freePort(t), "connection refused"},
		{"certificate from an unknown authority", untrusted.URL, "certificate signed by unknown authority"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kubeconfig := writeKubeconfig(t, tc.server)
			p := startPeerd(t, peerdOptions{NoWait: true, Args: []string{"--cluster-name", cluster, "--kubeconfig", kubeconfig}})
			waitReadyz(t, p, waitTimeout, http.StatusServiceUnavailable, "unreachable", tc.cause)
			checkStructuredLogs(t, p.Logs())
		})
	}
}

// TestReadyzSaysTheAPIServerWentAway: after the initial sync, losing the
// API server keeps the last good objects served (still ready) and /readyz
// says which resources cannot be listed and why.
func TestReadyzSaysTheAPIServerWentAway(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--kubeconfig", kube.Kubeconfig}})
	kube.StopAPIServer()
	body := waitReadyz(t, p, readyzRecovery, http.StatusOK, "pods: unreachable", "connection refused")
	t.Logf("/readyz after the API server went away:\n%s", body)
	checkStructuredLogs(t, p.Logs())
}

// waitReadyz polls /readyz until it answers code with a body holding every
// fragment, and returns the body.
func waitReadyz(t *testing.T, p *peerdProcess, timeout time.Duration, code int, fragments ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, body := p.get("/readyz")
		ok := got == code
		for _, f := range fragments {
			ok = ok && strings.Contains(body, f)
		}
		if ok {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz after %s: %d\n%s\nwant %d with %q", timeout, got, body, code, fragments)
		}
		select {
		case <-p.exited:
			t.Fatalf("peerd exited while waiting for /readyz %d %q", code, fragments)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// checkStructuredLogs fails on any output line that is not a JSON object:
// client-go's klog lines must go through peerd's logger too.
func checkStructuredLogs(t *testing.T, logs string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Errorf("unstructured output line: %s", line)
		}
	}
}

func writeKubeconfig(t *testing.T, server string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "unused"}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	cfg.CurrentContext = "c"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}
