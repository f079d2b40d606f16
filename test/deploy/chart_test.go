package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/restmapper"

	kubeharness "github.com/peerd-mesh/peerd/test/kube"
	"github.com/peerd-mesh/peerd/test/mesh"
)

const (
	releaseName = "peerd"
	systemNS    = "istio-system"
	gatewayNS   = "istio-gateways"
	// fieldManager names this test's server-side applies.
	fieldManager = "peerd-chart-test"
)

var (
	chartDir    = filepath.Join("..", "..", "deploy", "peerd")
	peerdBinary string
)

func TestMain(m *testing.M) { mesh.MainWithPeerd(m, &peerdBinary) }

// valuesFiles are the chart's CI values: the defaults, and every value
// changed (three replicas among them).
func valuesFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*.yaml"))
	if err != nil || len(files) < 2 {
		t.Fatalf("chart CI values in %s/ci: %v (found %d, want the default and the non-default set)", chartDir, err, len(files))
	}
	return files
}

// findHelm returns the helm binary (PATH, then GOPATH/bin, where `make
// tools` installs it). Without it the test skips, unless
// PEERD_E2E_TOOLS_REQUIRED is set (CI), where that is a failure.
func findHelm(t *testing.T) string {
	t.Helper()
	if path, err := exec.LookPath("helm"); err == nil {
		return path
	}
	if gopath, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		path := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "helm")
		if _, err := os.Stat(path); err == nil {
			return path
		}
	}
	if os.Getenv("PEERD_E2E_TOOLS_REQUIRED") != "" {
		t.Fatal("helm is not installed; run `make tools`")
	}
	t.Skip("helm is not installed; `make tools` installs it")
	return ""
}

func runHelm(helm string, args ...string) ([]byte, error) {
	cmd := exec.Command(helm, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("helm %s: %w\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out, nil
}

// render runs `helm template` with a values file and decodes every object.
func render(t *testing.T, helm, values string, set ...string) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", releaseName, chartDir, "--namespace", systemNS, "--values", values}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := runHelm(helm, args...)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeAll(out)
	if err != nil {
		t.Fatalf("%s: %v", values, err)
	}
	return objs
}

func decodeAll(manifests []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(m) == 0 {
			continue // an empty document (a template that rendered nothing)
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

func describe(o *unstructured.Unstructured) string {
	if o.GetNamespace() == "" {
		return fmt.Sprintf("%s %s", o.GetKind(), o.GetName())
	}
	return fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
}

func deployment(t *testing.T, objs []*unstructured.Unstructured) *appsv1.Deployment {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "Deployment" {
			continue
		}
		var d appsv1.Deployment
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &d); err != nil {
			t.Fatalf("%s: %v", describe(o), err)
		}
		return &d
	}
	t.Fatal("the chart rendered no Deployment")
	return nil
}

// serveFlags are the long flags `peerd serve --help` lists.
func serveFlags(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command(peerdBinary, "serve", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("peerd serve --help: %v\n%s", err, out)
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)`).FindAllSubmatch(out, -1) {
		flags[string(m[1])] = true
	}
	if !flags["cluster-name"] || !flags["ca-dir"] {
		t.Fatalf("peerd serve --help lists no --cluster-name or --ca-dir; the help format changed?\n%s", out)
	}
	return flags
}

func TestChartPassesOnlyFlagsPeerdServeHas(t *testing.T) {
	helm := findHelm(t)
	known := serveFlags(t)
	for _, values := range valuesFiles(t) {
		d := deployment(t, render(t, helm, values))
		args := d.Spec.Template.Spec.Containers[0].Args
		if len(args) == 0 || args[0] != "serve" {
			t.Fatalf("%s: Deployment %s/%s: args %q do not start with serve", values, d.Namespace, d.Name, args)
		}
		for _, arg := range args[1:] {
			name, _, _ := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
			switch {
			case !strings.HasPrefix(arg, "--"):
				t.Errorf("%s: Deployment %s/%s: arg %q is not a --flag", values, d.Namespace, d.Name, arg)
			case !known[name]:
				t.Errorf("%s: Deployment %s/%s: arg %q: `peerd serve` has no flag --%s", values, d.Namespace, d.Name, arg, name)
			}
		}
	}
}

// The Deployment as the chart promises it: the replicas asked for, the pod
// name from the downward API, the cacerts Secret at --ca-dir, the probes on
// the monitoring port, and a non-root, read-only container.
func TestChartDeployment(t *testing.T) {
	helm := findHelm(t)
	for _, values := range valuesFiles(t) {
		d := deployment(t, render(t, helm, values, "replicas=3"))
		where := fmt.Sprintf("%s: Deployment %s/%s", values, d.Namespace, d.Name)
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
			t.Errorf("%s: replicas %v, want 3", where, d.Spec.Replicas)
		}
		pod := d.Spec.Template.Spec
		c := pod.Containers[0]

		var podName *corev1.EnvVar
		for i := range c.Env {
			if c.Env[i].Name == "POD_NAME" {
				podName = &c.Env[i]
			}
		}
		if podName == nil || podName.ValueFrom == nil || podName.ValueFrom.FieldRef == nil ||
			podName.ValueFrom.FieldRef.FieldPath != "metadata.name" {
			t.Errorf("%s: env POD_NAME is not the downward API's metadata.name: %+v", where, podName)
		}

		caDir := ""
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--ca-dir="); ok {
				caDir = v
			}
		}
		var mount *corev1.VolumeMount
		for i := range c.VolumeMounts {
			if c.VolumeMounts[i].MountPath == caDir {
				mount = &c.VolumeMounts[i]
			}
		}
		if caDir == "" || mount == nil || !mount.ReadOnly {
			t.Errorf("%s: --ca-dir %q is not a read-only volume mount: %+v", where, caDir, c.VolumeMounts)
		} else {
			i := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == mount.Name })
			if i < 0 || pod.Volumes[i].Secret == nil || !strings.HasPrefix(pod.Volumes[i].Secret.SecretName, "cacerts") {
				t.Errorf("%s: volume %q at --ca-dir is not the cacerts Secret: %+v", where, mount.Name, pod.Volumes)
			}
		}

		for probe, path := range map[*corev1.Probe]string{c.ReadinessProbe: "/readyz", c.LivenessProbe: "/healthz"} {
			if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != path || probe.HTTPGet.Port.String() != "http-monitoring" {
				t.Errorf("%s: no probe on %s at port http-monitoring: %+v", where, path, probe)
			}
		}
		if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "http-monitoring" && p.ContainerPort == 15014 }) {
			t.Errorf("%s: no container port http-monitoring 15014: %+v", where, c.Ports)
		}

		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
			t.Errorf("%s: not non-root and read-only: pod %+v, container %+v", where, pod.SecurityContext, sc)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s: no cpu and memory requests: %+v", where, c.Resources.Requests)
		}
	}
}

// Every object of every values set goes through the real API server's
// validation and admission (server-side apply, dryRun All), in namespaces
// that exist, with the Gateway API CRDs the TLSRoute and ReferenceGrant need.
func TestChartPassesServerSideDryRun(t *testing.T) {
	helm := findHelm(t)
	c := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// peerd-state: ci/ha-values.yaml keeps the state Secrets there.
	createNamespaces(ctx, t, c, systemNS, gatewayNS, "peerd-state")

	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Kube.Discovery()))
	for _, values := range valuesFiles(t) {
		objs := render(t, helm, values)
		for _, o := range objs {
			if err := apply(ctx, c, mapper, o, true); err != nil {
				t.Errorf("%s: %v", values, err)
			}
		}
	}
}

func createNamespaces(ctx context.Context, t *testing.T, c *kubeharness.Cluster, names ...string) {
	t.Helper()
	for _, name := range names {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if _, err := c.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create namespace %s: %v", name, err)
		}
	}
}

// apply server-side applies o (only validated and admitted when dryRun).
// Every namespaced object must name its namespace: the chart puts them in
// the system namespace and the gateway's, whatever the release's is.
func apply(ctx context.Context, c *kubeharness.Cluster, mapper *restmapper.DeferredDiscoveryRESTMapper, o *unstructured.Unstructured, dryRun bool) error {
	gvk := o.GroupVersionKind()
	mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", describe(o), gvk, err)
	}
	res := c.Dynamic.Resource(mapping.Resource)
	opts := metav1.ApplyOptions{FieldManager: fieldManager, Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if mapping.Scope.Name() == "namespace" {
		if o.GetNamespace() == "" {
			return fmt.Errorf("%s: metadata.namespace: not set", describe(o))
		}
		_, err = res.Namespace(o.GetNamespace()).Apply(ctx, o.GetName(), o, opts)
	} else {
		_, err = res.Apply(ctx, o.GetName(), o, opts)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", describe(o), err)
	}
	return nil
}

// access is one request peerd's service account makes (or must not be
// able to make).
type access struct {
	verb, group, resource, subresource, namespace, name string
}

func (a access) String() string {
	r := a.resource
	if a.group != "" {
		r += "." + a.group
	}
	if a.subresource != "" {
		r += "/" + a.subresource
	}
	if a.name != "" {
		r += " " + a.name
	}
	where := "cluster-wide"
	if a.namespace != "" {
		where = "in " + a.namespace
	}
	return fmt.Sprintf("%s %s %s", a.verb, r, where)
}

// peerdCalls are the API requests peerd makes, each from the client-go call
// that makes it.
var peerdCalls = []access{
	// internal/discovery/kube.go: informers (list, watch) on all namespaces.
	{verb: "list", resource: "pods"}, {verb: "watch", resource: "pods"},
	{verb: "list", resource: "services"}, {verb: "watch", resource: "services"},
	{verb: "list", resource: "namespaces"}, {verb: "watch", resource: "namespaces"},
	{verb: "list", resource: "nodes"}, {verb: "watch", resource: "nodes"},
	{verb: "list", group: "discovery.k8s.io", resource: "endpointslices"},
	{verb: "watch", group: "discovery.k8s.io", resource: "endpointslices"},
	{verb: "list", group: "gateway.networking.k8s.io", resource: "gateways"},
	{verb: "watch", group: "gateway.networking.k8s.io", resource: "gateways"},
	// The link conditions in the status of istio-remote Gateways.
	// internal/serve/linkstatus.go: server-side apply of the link conditions.
	{verb: "patch", group: "gateway.networking.k8s.io", resource: "gateways", subresource: "status", namespace: gatewayNS},
	// internal/authz/tokens.go: ztunnel's bearer token on the TLS listener.
	{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"},
	// internal/serve/events.go: client-go's recorder creates, then patches.
	{verb: "create", resource: "events", namespace: "default"},
	{verb: "patch", resource: "events", namespace: "default"},
	// internal/kubestate: Put (get, create, update), Get, List, Delete.
	{verb: "get", resource: "secrets", namespace: systemNS, name: "peerd-vips"},
	{verb: "list", resource: "secrets", namespace: systemNS},
	{verb: "create", resource: "secrets", namespace: systemNS},
	{verb: "update", resource: "secrets", namespace: systemNS, name: "peerd-link-cluster2"},
	{verb: "delete", resource: "secrets", namespace: systemNS, name: "peerd-link-cluster2"},
	// internal/serve/leader.go: client-go's LeaseLock gets, creates, updates.
	{verb: "get", group: "coordination.k8s.io", resource: "leases", namespace: systemNS, name: "peerd"},
	{verb: "create", group: "coordination.k8s.io", resource: "leases", namespace: systemNS},
	{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: systemNS, name: "peerd"},
	// internal/serve/meshconfig.go: istiod's mesh config, read once.
	{verb: "get", resource: "configmaps", namespace: systemNS, name: "istio"},
}

// notPeerds are requests the chart must not allow: secrets and leases
// outside the system namespace, other leases and ConfigMaps, verbs peerd
// does not use, writes to what peerd only reads.
var notPeerds = []access{
	{verb: "get", resource: "secrets", namespace: "default", name: "peerd-vips"},
	{verb: "list", resource: "secrets"},
	{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: systemNS, name: "istiod"},
	{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: "kube-system", name: "peerd"},
	{verb: "update", group: "gateway.networking.k8s.io", resource: "gateways", namespace: gatewayNS},
	{verb: "delete", resource: "pods", namespace: "default"},
	{verb: "create", resource: "services", namespace: systemNS},
	{verb: "update", resource: "configmaps", namespace: systemNS, name: "istio"},
	{verb: "get", resource: "configmaps", namespace: systemNS, name: "istio-ca-root-cert"},
	{verb: "list", resource: "configmaps", namespace: systemNS},
	{verb: "update", group: "gateway.networking.k8s.io", resource: "gateways", subresource: "status", namespace: gatewayNS},
	{verb: "get", resource: "configmaps", namespace: "default", name: "istio"},
	{verb: "create", group: "authorization.k8s.io", resource: "subjectaccessreviews"},
}

// The chart's RBAC, applied for real, lets peerd's service account make
// every request peerd's code makes, and not the neighbouring ones.
func TestChartRBACGrantsWhatPeerdCalls(t *testing.T) {
	helm := findHelm(t)
	c := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	createNamespaces(ctx, t, c, systemNS, gatewayNS)

	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Kube.Discovery()))
	user := ""
	for _, o := range render(t, helm, valuesFiles(t)[0]) {
		switch o.GetKind() {
		case "ServiceAccount":
			user = "system:serviceaccount:" + o.GetNamespace() + ":" + o.GetName()
		case "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
		default:
			continue
		}
		if err := apply(ctx, c, mapper, o, false); err != nil {
			t.Fatal(err)
		}
	}
	if user == "" {
		t.Fatal("the chart rendered no ServiceAccount")
	}

	// The authorizer learns of new roles through its informers: wait until
	// each request is allowed rather than asking once.
	for _, a := range peerdCalls {
		var reason string
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			var allowed bool
			allowed, reason = review(ctx, t, c, user, a)
			return allowed, nil
		})
		if err != nil {
			t.Errorf("%s may not %s (%s)", user, a, reason)
		}
	}
	// Every binding is known by now (the requests above went through all
	// of them), so one answer each is final.
	for _, a := range notPeerds {
		if allowed, _ := review(ctx, t, c, user, a); allowed {
			t.Errorf("%s may %s: more than peerd needs", user, a)
		}
	}
}

func review(ctx context.Context, t *testing.T, c *kubeharness.Cluster, user string, a access) (bool, string) {
	t.Helper()
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   user,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + systemNS, "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource,
			Namespace: a.namespace, Name: a.name,
		},
	}}
	got, err := c.Kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("subjectaccessreview %s: %v", a, err)
	}
	return got.Status.Allowed, got.Status.Reason
}

// A misspelt, malformed or missing value fails `helm lint`
// (values.schema.json), and the failure names the value.
func TestChartRefusesBadValues(t *testing.T) {
	helm := findHelm(t)
	defaults := valuesFiles(t)[0]
	for _, tc := range []struct {
		set, want string
	}{
		{"replica=3", "replica"},
		{"eastWestGateway.hostname=x", "hostname"},
		{"peerStaleTTL=5minutes", "peerStaleTTL"},
		{"logLevel=verbose", "logLevel"},
		{"vip.ipv4Range=240.240.0.0", "ipv4Range"},
		{"clusterName=", "clusterName"},
	} {
		out, err := runHelm(helm, "lint", chartDir, "--namespace", systemNS, "--values", defaults, "--set", tc.set)
		if err == nil {
			t.Errorf("helm lint --set %s passed, want a failure naming %q:\n%s", tc.set, tc.want, out)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("helm lint --set %s: the failure does not name %q: %v", tc.set, tc.want, err)
		}
	}
}

// Extension mode is the chart's default (docs/extension-mode.md): peerd
// reaches istiod as ztunnel does, so the token it sends must be a projected
// istio-ca token at --istiod-token-file, and istiod's root the
// istio-ca-root-cert ConfigMap at --istiod-ca-file. istiod.relay=false is
// standalone mode: none of it.
func TestChartExtensionMode(t *testing.T) {
	helm := findHelm(t)
	for _, values := range valuesFiles(t) {
		for _, relay := range []bool{true, false} {
			d := deployment(t, render(t, helm, values, fmt.Sprintf("istiod.relay=%v", relay)))
			where := fmt.Sprintf("%s, istiod.relay=%v: Deployment %s/%s", values, relay, d.Namespace, d.Name)
			pod := d.Spec.Template.Spec
			c := pod.Containers[0]
			flags := map[string]string{}
			for _, a := range c.Args {
				name, value, _ := strings.Cut(a, "=")
				flags[name] = value
			}
			if _, ok := flags["--istiod-address"]; ok != relay {
				t.Errorf("%s: --istiod-address given: %v, want %v (args %q)", where, ok, relay, c.Args)
			}
			if !relay {
				continue
			}
			if !strings.HasSuffix(flags["--istiod-address"], ":15012") || flags["--istiod-tls"] != "true" {
				t.Errorf("%s: want TLS to istiod's 15012: %q", where, c.Args)
			}
			// volumeAt is the volume mounted read-only at file's directory.
			volumeAt := func(file string) *corev1.Volume {
				dir := filepath.Dir(file)
				for _, m := range c.VolumeMounts {
					if m.MountPath == dir && m.ReadOnly {
						if i := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }); i >= 0 {
							return &pod.Volumes[i]
						}
					}
				}
				return nil
			}
			token := volumeAt(flags["--istiod-token-file"])
			if token == nil || token.Projected == nil || len(token.Projected.Sources) != 1 ||
				token.Projected.Sources[0].ServiceAccountToken == nil ||
				token.Projected.Sources[0].ServiceAccountToken.Audience != "istio-ca" ||
				token.Projected.Sources[0].ServiceAccountToken.Path != filepath.Base(flags["--istiod-token-file"]) {
				t.Errorf("%s: --istiod-token-file %q is not a projected istio-ca token: %+v", where, flags["--istiod-token-file"], token)
			}
			ca := volumeAt(flags["--istiod-ca-file"])
			if ca == nil || ca.ConfigMap == nil || !strings.HasPrefix(ca.ConfigMap.Name, "istio-ca-root-cert") || filepath.Base(flags["--istiod-ca-file"]) != "root-cert.pem" {
				t.Errorf("%s: --istiod-ca-file %q is not istiod's root-cert.pem ConfigMap: %+v", where, flags["--istiod-ca-file"], ca)
			}
		}
	}
}
