package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/discovery/peers"
	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/kubestate"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// The permissions docs/kubernetes.md lists ("Permissions (least
// privilege)"); the two must say the same.
var (
	peerdClusterRules = []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces", "nodes", "pods", "services"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gateways"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gateways/status"}, Verbs: []string{"patch"}},
		{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}
	peerdSystemNamespaceRules = []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "create", "update", "delete"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{kubestate.LeaseName}, Verbs: []string{"get", "update"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"istio"}, Verbs: []string{"get"}},
	}
)

// rbacWarnedService has a traffic-distribution value peerd reports with a
// Warning Event.
const rbacWarnedService = `apiVersion: v1
kind: Service
metadata:
  name: warned
  namespace: hello
  annotations:
    networking.istio.io/traffic-distribution: Closest
spec:
  clusterIP: 10.96.3.100
  selector: {app: warned}
  ports: [{name: http, port: 80}]
`

// TestKubernetesModeRunsWithTheDocumentedRBAC: peerd, authenticated as its
// service account (a token from the TokenRequest API) and granted only the
// documented rules, reads the mesh config, holds the Lease, writes a link's
// conditions, records a Warning Event, reviews a ztunnel's token, saves the link state and the VIPs,
// releases the Lease, and logs no Forbidden.
func TestKubernetesModeRunsWithTheDocumentedRBAC(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	objs, err := discovery.DecodeManifests("test.yaml", []byte(kubeStateManifest(t)+"---\n"+globalServiceManifest("echo", 1)+"---\n"+rbacWarnedService))
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	const ns = "istio-system"
	if _, err := kube.Kube.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "istio"}, Data: map[string]string{"mesh": "trustDomain: cluster1.example\n"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubeconfig := peerdKubeconfig(t, ctx, kube)

	pki := peerdCerts(t, "cluster1,cluster2")
	listen := freePort(t)
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", "cluster1", "--kubeconfig", kubeconfig,
		"--pod-name", "peerd-0", "--peer-sync-timeout", "1s", "--ca-dir", filepath.Join(pki, "cluster1"), "--listen", listen}})
	if !strings.Contains(p.Logs(), `"trust_domain":"cluster1.example"`) {
		t.Error("the mesh config's trust domain was not read")
	}
	gateways := kube.Gateway.GatewayV1().Gateways(ns)
	waitUntil(t, time.Minute, "the link's conditions on gateway cluster2", func() bool {
		gw, err := gateways.Get(ctx, "cluster2", metav1.GetOptions{})
		if err != nil {
			return false
		}
		n := 0
		for _, c := range gw.Status.Conditions {
			if c.Type == federation.ConditionConnected || c.Type == federation.ConditionSynced {
				n++
			}
		}
		return n == 2
	}, p.Logs)
	lease, err := kube.Kube.CoordinationV1().Leases(ns).Get(ctx, kubestate.LeaseName, metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "peerd-0" {
		t.Errorf("Lease: %+v, %v; want held by peerd-0", lease, err)
	}
	waitUntil(t, time.Minute, "a Warning Event on service hello/warned", func() bool {
		events, err := kube.Kube.CoreV1().Events("hello").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=warned"})
		return err == nil && len(events.Items) > 0
	}, p.Logs)
	// A ztunnel's token is reviewed under peerd's role (tokenreviews).
	tlsConfig, err := certs.ClientTLSConfig(filepath.Join(pki, "root-cert.pem"), "istiod.istio-system.svc")
	if err != nil {
		t.Fatal(err)
	}
	z := ztunnel.Start(t, ztunnel.Config{
		Target: listen, ClusterID: "cluster1", Token: serviceAccountToken(t, ctx, kube, "ztunnel", "istio-ca"),
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig))},
	})
	waitState(t, z, "the mesh, for a ztunnel with a valid token", func(s *ztunnel.State) bool { return s.Responses > 0 })

	// The link's state is saved at the latest as peerd stops.
	p.Stop()
	secrets := kube.Kube.CoreV1().Secrets(ns)
	for _, name := range []string{"peerd-vips", peers.LinkObjectName("cluster2")} {
		if _, err := secrets.Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("secret %s: %v", name, err)
		}
	}
	if l, err := kube.Kube.CoordinationV1().Leases(ns).Get(ctx, kubestate.LeaseName, metav1.GetOptions{}); err != nil ||
		(l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "") {
		t.Errorf("Lease after peerd stopped: %+v, %v; want it released", l, err)
	}
	if logs := p.Logs(); strings.Contains(strings.ToLower(logs), "forbidden") {
		t.Errorf("peerd was refused something under the documented RBAC:\n%s", logs)
	}
}

// peerdKubeconfig creates the service account istio-system/peerd, grants it
// exactly the documented rules (peerdClusterRules, peerdSystemNamespaceRules)
// and returns a kubeconfig that authenticates as it with a token from the
// TokenRequest API: peerd then runs with what an installation gives it.
func peerdKubeconfig(t *testing.T, ctx context.Context, kube *kubeharness.Cluster) string {
	t.Helper()
	const ns = "istio-system"
	if _, err := kube.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "peerd"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	subject := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "peerd", Namespace: ns}}
	rbac := kube.Kube.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "peerd"}, Rules: peerdClusterRules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "peerd"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "peerd"}, Subjects: subject}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "peerd"}, Rules: peerdSystemNamespaceRules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "peerd"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "peerd"}, Subjects: subject}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expiry := int64(3600)
	token, err := kube.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "peerd",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := kube.KubeconfigForToken("peerd", token.Status.Token)
	if err != nil {
		t.Fatal(err)
	}
	return kubeconfig
}
