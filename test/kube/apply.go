package kubeharness

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/discovery"
)

// holdFinalizer keeps a pod that a manifest shows as terminating in that
// state: with no kubelet the pod would stay anyway, but the finalizer makes
// that independent of how the API server treats unbound or finished pods.
const holdFinalizer = "kubeharness.peerd.dev/hold"

// ReadDir decodes every *.yaml / *.yml below dir (dot-directories skipped,
// as the file source does) with discovery.DecodeManifests, in path order.
func ReadDir(dir string) ([]runtime.Object, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if ext := filepath.Ext(path); ext == ".yaml" || ext == ".yml" {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var objs []runtime.Object
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		decoded, err := discovery.DecodeManifests(file, data)
		if err != nil {
			return nil, err
		}
		objs = append(objs, decoded...)
	}
	return objs, nil
}

// ApplyDir applies the manifests below dir through the API (see Apply).
func (c *Cluster) ApplyDir(ctx context.Context, dir string) error {
	objs, err := ReadDir(dir)
	if err != nil {
		return err
	}
	return c.Apply(ctx, objs)
}

// Apply makes the cluster hold objs as a real cluster would after its
// controllers and kubelets had run: objects are created (or updated when they
// exist) in dependency order; every service account a pod names is created;
// status is written through the status subresource; a pod whose manifest
// carries a deletionTimestamp is deleted, and kept, so it is terminating.
// Services keep the clusterIPs the manifests give them. The objects passed in
// are not modified.
func (c *Cluster) Apply(ctx context.Context, objs []runtime.Object) error {
	sorted := make([]runtime.Object, len(objs))
	copy(sorted, objs)
	sort.SliceStable(sorted, func(i, j int) bool { return applyRank(sorted[i]) < applyRank(sorted[j]) })
	for _, obj := range sorted {
		var err error
		switch o := obj.(type) {
		case *corev1.Namespace:
			err = c.applyNamespace(ctx, o.DeepCopy())
		case *corev1.Node:
			err = c.applyNode(ctx, o.DeepCopy())
		case *corev1.ServiceAccount:
			err = c.applyServiceAccount(ctx, o.DeepCopy())
		case *corev1.Service:
			err = c.applyService(ctx, o.DeepCopy())
		case *corev1.Pod:
			err = c.applyPod(ctx, o.DeepCopy())
		case *discoveryv1.EndpointSlice:
			err = c.applyEndpointSlice(ctx, o.DeepCopy())
		case *gatewayv1.Gateway:
			err = c.applyGateway(ctx, o.DeepCopy())
		default:
			err = fmt.Errorf("%T: the harness cannot apply this kind", obj)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// applyRank orders kinds so that what an object needs exists before it.
func applyRank(obj runtime.Object) int {
	switch obj.(type) {
	case *corev1.Namespace:
		return 0
	case *corev1.Node:
		return 1
	case *corev1.ServiceAccount:
		return 2
	case *corev1.Service:
		return 3
	case *corev1.Pod:
		return 4
	case *discoveryv1.EndpointSlice:
		return 5
	default:
		return 6
	}
}

// forCreate clears what only the API server may set.
func forCreate(m *metav1.ObjectMeta) {
	m.ResourceVersion = ""
	m.UID = ""
	m.Generation = 0
	m.CreationTimestamp = metav1.Time{}
	m.DeletionTimestamp = nil
	m.DeletionGracePeriodSeconds = nil
	m.ManagedFields = nil
}

func objName(kind string, m metav1.ObjectMeta) string {
	if m.Namespace == "" {
		return kind + " " + m.Name
	}
	return kind + " " + m.Namespace + "/" + m.Name
}

func (c *Cluster) applyNamespace(ctx context.Context, ns *corev1.Namespace) error {
	forCreate(&ns.ObjectMeta)
	api := c.Kube.CoreV1().Namespaces()
	_, err := api.Create(ctx, ns, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// default, kube-system and friends exist from the start.
		var cur *corev1.Namespace
		if cur, err = api.Get(ctx, ns.Name, metav1.GetOptions{}); err == nil {
			cur.Labels, cur.Annotations = mergeMap(cur.Labels, ns.Labels), ns.Annotations
			_, err = api.Update(ctx, cur, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", objName("namespace", ns.ObjectMeta), err)
	}
	return nil
}

// mergeMap keeps the API server's own labels (kubernetes.io/metadata.name)
// while applying the manifest's.
func mergeMap(cur, want map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range cur {
		if strings.HasPrefix(k, "kubernetes.io/") {
			out[k] = v
		}
	}
	for k, v := range want {
		out[k] = v
	}
	return out
}

func (c *Cluster) applyNode(ctx context.Context, node *corev1.Node) error {
	forCreate(&node.ObjectMeta)
	api := c.Kube.CoreV1().Nodes()
	status := node.Status
	got, err := api.Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		if got, err = api.Get(ctx, node.Name, metav1.GetOptions{}); err == nil {
			got.Labels, got.Annotations, got.Spec = mergeMap(got.Labels, node.Labels), node.Annotations, node.Spec
			got, err = api.Update(ctx, got, metav1.UpdateOptions{})
		}
	}
	if err == nil {
		got.Status = status
		_, err = api.UpdateStatus(ctx, got, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("%s: %w", objName("node", node.ObjectMeta), err)
	}
	return nil
}

func (c *Cluster) applyServiceAccount(ctx context.Context, sa *corev1.ServiceAccount) error {
	forCreate(&sa.ObjectMeta)
	api := c.Kube.CoreV1().ServiceAccounts(sa.Namespace)
	_, err := api.Create(ctx, sa, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var cur *corev1.ServiceAccount
		if cur, err = api.Get(ctx, sa.Name, metav1.GetOptions{}); err == nil {
			cur.Labels, cur.Annotations = sa.Labels, sa.Annotations
			_, err = api.Update(ctx, cur, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", objName("serviceaccount", sa.ObjectMeta), err)
	}
	return nil
}

// ensureServiceAccount creates what kube-controller-manager's service-account
// controller would: the pod's account, "default" when it names none. Without
// it the ServiceAccount admission plugin rejects the pod.
func (c *Cluster) ensureServiceAccount(ctx context.Context, namespace, name string) error {
	if name == "" {
		name = "default"
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	_, err := c.Kube.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("%s: %w", objName("serviceaccount", sa.ObjectMeta), err)
	}
	return nil
}

func (c *Cluster) applyService(ctx context.Context, svc *corev1.Service) error {
	forCreate(&svc.ObjectMeta)
	api := c.Kube.CoreV1().Services(svc.Namespace)
	status := svc.Status
	// Look first: creating an existing Service whose manifest names its
	// clusterIP fails on the IP allocation ("already allocated"), before
	// the API server would say AlreadyExists.
	got, err := api.Get(ctx, svc.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		got, err = api.Create(ctx, svc, metav1.CreateOptions{})
	case err == nil:
		svc.ResourceVersion = got.ResourceVersion
		got, err = api.Update(ctx, svc, metav1.UpdateOptions{})
	}
	if err == nil && len(status.LoadBalancer.Ingress) > 0 {
		got.Status = status
		_, err = api.UpdateStatus(ctx, got, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("%s: %w", objName("service", svc.ObjectMeta), err)
	}
	return nil
}

func (c *Cluster) applyPod(ctx context.Context, pod *corev1.Pod) error {
	name := objName("pod", pod.ObjectMeta)
	if err := c.ensureServiceAccount(ctx, pod.Namespace, pod.Spec.ServiceAccountName); err != nil {
		return fmt.Errorf("%s: spec.serviceAccountName: %w", name, err)
	}
	terminating := pod.DeletionTimestamp != nil
	grace := pod.DeletionGracePeriodSeconds
	status := pod.Status
	forCreate(&pod.ObjectMeta)
	if terminating {
		pod.Finalizers = append(pod.Finalizers, holdFinalizer)
	}
	api := c.Kube.CoreV1().Pods(pod.Namespace)
	got, err := api.Create(ctx, pod, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// A pod's spec is mostly immutable; what a manifest change can mean
		// for a running pod is its metadata and its status.
		if got, err = api.Get(ctx, pod.Name, metav1.GetOptions{}); err == nil {
			got.Labels, got.Annotations = pod.Labels, pod.Annotations
			if terminating && !containsString(got.Finalizers, holdFinalizer) {
				got.Finalizers = append(got.Finalizers, holdFinalizer)
			}
			got, err = api.Update(ctx, got, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	got.Status = status
	if got, err = api.UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("%s: status: %w", name, err)
	}
	if terminating && got.DeletionTimestamp == nil {
		if err := api.Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: grace}); err != nil {
			return fmt.Errorf("%s: metadata.deletionTimestamp: delete: %w", name, err)
		}
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func (c *Cluster) applyEndpointSlice(ctx context.Context, es *discoveryv1.EndpointSlice) error {
	forCreate(&es.ObjectMeta)
	api := c.Kube.DiscoveryV1().EndpointSlices(es.Namespace)
	_, err := api.Create(ctx, es, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var cur *discoveryv1.EndpointSlice
		if cur, err = api.Get(ctx, es.Name, metav1.GetOptions{}); err == nil {
			es.ResourceVersion = cur.ResourceVersion
			_, err = api.Update(ctx, es, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", objName("endpointslice", es.ObjectMeta), err)
	}
	return nil
}

func (c *Cluster) applyGateway(ctx context.Context, gw *gatewayv1.Gateway) error {
	forCreate(&gw.ObjectMeta)
	api := c.Gateway.GatewayV1().Gateways(gw.Namespace)
	status := gw.Status
	got, err := api.Create(ctx, gw, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		if got, err = api.Get(ctx, gw.Name, metav1.GetOptions{}); err == nil {
			gw.ResourceVersion = got.ResourceVersion
			got, err = api.Update(ctx, gw, metav1.UpdateOptions{})
		}
	}
	if err == nil && (len(status.Addresses) > 0 || len(status.Conditions) > 0 || len(status.Listeners) > 0) {
		got.Status = status
		_, err = api.UpdateStatus(ctx, got, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("%s: %w", objName("gateway", gw.ObjectMeta), err)
	}
	return nil
}
