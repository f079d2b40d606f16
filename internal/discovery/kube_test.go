package discovery

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	fakediscovery "k8s.io/client-go/discovery/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
)

// These tests run KubeSource against client-go's fake clientsets: they prove
// the wiring (which kinds, sync, events, tombstones, the CRD check). The
// proof against a real API server is test/e2e/kube_test.go.

const kubeTestTimeout = 30 * time.Second

var managed = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}}

func objMeta(ns, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name, ManagedFields: managed, ResourceVersion: "1"}
}

type fakeCluster struct {
	kube    *kubefake.Clientset
	gateway *gatewayfake.Clientset
	idx     *Index
	src     *KubeSource
	logs    *observer.ObservedLogs
	// watches receives the resource of every watch the informers open, after
	// the watch exists: objects created later are guaranteed to be seen.
	watches chan string
}

func newFakeCluster(t *testing.T, gatewayCRD bool, kubeObjs []runtime.Object, gwObjs []runtime.Object) *fakeCluster {
	t.Helper()
	fc := &fakeCluster{
		kube: kubefake.NewClientset(kubeObjs...),
		// NewClientset's field-managed tracker cannot handle CRD types
		// (kubernetes/kubernetes#126850): gateways would not be served.
		gateway: gatewayfake.NewSimpleClientset(),
		idx:     NewIndex(),
		watches: make(chan string, 16),
	}
	// gateway-api's v1beta1 Gateway is an alias of v1's, so the tracker's
	// kind guessing files a preloaded Gateway under v1beta1: add it as v1.
	gatewayGVR := schema.GroupVersionResource{Group: gatewayv1.GroupName, Version: "v1", Resource: gatewayResource}
	for _, obj := range gwObjs {
		gw := obj.(*gatewayv1.Gateway)
		if err := fc.gateway.Tracker().Create(gatewayGVR, gw, gw.Namespace); err != nil {
			t.Fatal(err)
		}
	}
	if gatewayCRD {
		fc.kube.Resources = []*metav1.APIResourceList{{
			GroupVersion: gatewayGroupVersion,
			APIResources: []metav1.APIResource{{Name: gatewayResource, Namespaced: true, Kind: "Gateway"}},
		}}
	}
	// The fake tracker does not replay what happened between a list and the
	// watch that follows it, so tests wait for every watch before changing
	// anything. The reactor opens the watch itself so the signal comes after.
	fc.kube.PrependWatchReactor("*", watchSignal(fc.kube.Tracker(), fc.watches))
	fc.gateway.PrependWatchReactor("*", watchSignal(fc.gateway.Tracker(), fc.watches))
	core, logs := observer.New(zap.InfoLevel)
	fc.logs = logs
	disco := fc.kube.Discovery().(*fakediscovery.FakeDiscovery)
	fc.src = newKubeSource(fc.kube, fc.gateway, disco, fc.idx, zap.New(core))
	fc.src.discoveryBackoff, fc.src.discoveryBackoffMax = time.Millisecond, time.Millisecond
	fc.src.gatewayRecheck = time.Millisecond
	return fc
}

func watchSignal(tracker k8stesting.ObjectTracker, ch chan<- string) k8stesting.WatchReactionFunc {
	return func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := tracker.Watch(action.GetResource(), action.GetNamespace())
		if err != nil {
			return true, nil, err
		}
		ch <- action.GetResource().Resource
		return true, w, nil
	}
}

// run starts the source and stops it (waiting for Run to return) at cleanup.
func (fc *fakeCluster) run(t *testing.T) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fc.src.Run(ctx) }()
	var once sync.Once
	t.Cleanup(func() {
		once.Do(cancel)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run after cancel: %v", err)
			}
		case <-time.After(kubeTestTimeout):
			t.Errorf("Run did not return after cancel")
		}
	})
	return done
}

func (fc *fakeCluster) waitSynced(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), kubeTestTimeout)
	defer cancel()
	if err := fc.idx.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
}

func (fc *fakeCluster) waitWatches(t *testing.T, want ...string) {
	t.Helper()
	pending := map[string]bool{}
	for _, r := range want {
		pending[r] = true
	}
	timeout := time.After(kubeTestTimeout)
	for len(pending) > 0 {
		select {
		case r := <-fc.watches:
			delete(pending, r)
		case <-timeout:
			t.Fatalf("watches not opened: %v", pending)
		}
	}
}

// waitFor waits, on the Index's change signal, until cond holds for a
// snapshot.
func waitFor(t *testing.T, idx *Index, what string, cond func(Objects) bool) Objects {
	t.Helper()
	timeout := time.After(kubeTestTimeout)
	for {
		snap := idx.Snapshot()
		if cond(snap) {
			return snap
		}
		select {
		case <-idx.Changed():
		case <-timeout:
			t.Fatalf("timed out waiting for %s; index holds %d namespaces, %d nodes, %d pods, %d services, %d slices, %d gateways",
				what, len(snap.Namespaces), len(snap.Nodes), len(snap.Pods), len(snap.Services), len(snap.EndpointSlices), len(snap.Gateways))
		}
	}
}

func allKinds() ([]runtime.Object, []runtime.Object) {
	kube := []runtime.Object{
		&corev1.Namespace{ObjectMeta: objMeta("", "apps")},
		&corev1.Node{ObjectMeta: objMeta("", "node-a")},
		&corev1.Pod{ObjectMeta: objMeta("apps", "echo-1"), Status: corev1.PodStatus{PodIP: "10.0.0.1"}},
		&corev1.Service{ObjectMeta: objMeta("apps", "echo"), Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10"}},
		&discoveryv1.EndpointSlice{ObjectMeta: objMeta("apps", "echo-abc"), AddressType: discoveryv1.AddressTypeIPv4},
	}
	gw := []runtime.Object{
		&gatewayv1.Gateway{ObjectMeta: objMeta("istio-system", "eastwest"), Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-eastwest"}},
	}
	return kube, gw
}

func TestKubeSourceInitialSync(t *testing.T) {
	kube, gw := allKinds()
	fc := newFakeCluster(t, true, kube, gw)
	if fc.idx.Synced() {
		t.Fatal("index synced before the kubernetes source ran")
	}
	fc.run(t)
	fc.waitSynced(t)

	snap := fc.idx.Snapshot()
	counts := map[string]int{
		"namespaces": len(snap.Namespaces), "nodes": len(snap.Nodes), "pods": len(snap.Pods),
		"services": len(snap.Services), "endpointslices": len(snap.EndpointSlices), "gateways": len(snap.Gateways),
	}
	for kind, n := range counts {
		if n != 1 {
			t.Errorf("after sync: %d %s, want 1", n, kind)
		}
	}
	if t.Failed() {
		return
	}
	for _, m := range []metav1.Object{snap.Namespaces[0], snap.Nodes[0], snap.Pods[0], snap.Services[0], snap.EndpointSlices[0], snap.Gateways[0]} {
		if len(m.GetManagedFields()) != 0 {
			t.Errorf("%s: managedFields kept in the index: %v", m.GetName(), m.GetManagedFields())
		}
	}
	if got := snap.Pods[0].Status.PodIP; got != "10.0.0.1" {
		t.Errorf("pod apps/echo-1: status.podIP = %q, want 10.0.0.1", got)
	}
}

func TestKubeSourceEvents(t *testing.T) {
	fc := newFakeCluster(t, true, nil, nil)
	fc.run(t)
	fc.waitSynced(t)
	fc.waitWatches(t, "namespaces", "nodes", "pods", "services", "endpointslices", "gateways")
	ctx := context.Background()

	pods := fc.kube.CoreV1().Pods("apps")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "echo-1", ManagedFields: managed}}
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, fc.idx, "pod apps/echo-1 added", func(o Objects) bool { return len(o.Pods) == 1 })

	pod.Status.PodIP = "10.0.0.1"
	pod.ResourceVersion = "2"
	if _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	snap := waitFor(t, fc.idx, "pod apps/echo-1 status.podIP", func(o Objects) bool {
		return len(o.Pods) == 1 && o.Pods[0].Status.PodIP == "10.0.0.1"
	})
	if len(snap.Pods[0].ManagedFields) != 0 {
		t.Errorf("pod apps/echo-1: managedFields kept after update")
	}

	if err := pods.Delete(ctx, "echo-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, fc.idx, "pod apps/echo-1 removed", func(o Objects) bool { return len(o.Pods) == 0 })

	gws := fc.gateway.GatewayV1().Gateways("istio-system")
	gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "eastwest"}}
	if _, err := gws.Create(ctx, gw, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, fc.idx, "gateway istio-system/eastwest added", func(o Objects) bool { return len(o.Gateways) == 1 })
	if err := gws.Delete(ctx, "eastwest", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, fc.idx, "gateway istio-system/eastwest removed", func(o Objects) bool { return len(o.Gateways) == 0 })
}

func TestKubeSourceWithoutGatewayCRD(t *testing.T) {
	kube, gw := allKinds()
	fc := newFakeCluster(t, false, kube, gw)
	fc.run(t)
	fc.waitSynced(t)

	snap := fc.idx.Snapshot()
	if len(snap.Pods) != 1 || len(snap.Gateways) != 0 {
		t.Errorf("without the CRD: %d pods, %d gateways; want 1 pod and no gateways", len(snap.Pods), len(snap.Gateways))
	}
	for _, a := range fc.gateway.Actions() {
		t.Errorf("gateway API called without the CRD: %s %s", a.GetVerb(), a.GetResource().Resource)
	}
	if n := fc.logs.FilterMessageSnippet("Gateway API CRD is not installed").Len(); n != 1 {
		t.Errorf("%d warnings about the missing Gateway CRD, want 1", n)
	}
}

func TestKubeSourceGatewayCRDInstalledLater(t *testing.T) {
	kube, gw := allKinds()
	fc := newFakeCluster(t, true, kube, gw)
	// Discovery answers 404 for the group until the CRD is "installed".
	var installed atomic.Bool
	fc.kube.PrependReactor("get", "resource", func(k8stesting.Action) (bool, runtime.Object, error) {
		if !installed.Load() {
			return true, nil, apierrors.NewNotFound(schema.GroupResource{Group: gatewayv1.GroupName}, "v1")
		}
		return false, nil, nil
	})
	fc.run(t)
	fc.waitSynced(t)
	if n := len(fc.idx.Snapshot().Gateways); n != 0 {
		t.Fatalf("%d gateways before the CRD is installed", n)
	}
	if !slices.ContainsFunc(fc.idx.Errors(), func(err error) bool {
		return strings.Contains(err.Error(), "gateways: the Gateway API CRD is not installed")
	}) {
		t.Errorf("the missing CRD is not among the index errors: %v", fc.idx.Errors())
	}
	installed.Store(true)
	waitFor(t, fc.idx, "gateway istio-system/eastwest after the CRD appeared", func(o Objects) bool { return len(o.Gateways) == 1 })
	if !fc.idx.Synced() {
		t.Error("index not synced")
	}
	if errs := fc.idx.Errors(); len(errs) != 0 {
		t.Errorf("errors left after the CRD appeared: %v", errs)
	}
}

func TestKubeSourceDiscoveryRetried(t *testing.T) {
	kube, gw := allKinds()
	fc := newFakeCluster(t, true, kube, gw)
	failures := 2
	fc.kube.PrependReactor("get", "resource", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failures > 0 {
			failures--
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	fc.run(t)
	fc.waitSynced(t)
	if n := len(fc.idx.Snapshot().Gateways); n != 1 {
		t.Errorf("after discovery recovered: %d gateways, want 1", n)
	}
	if n := fc.logs.FilterMessageSnippet("retrying").Len(); n != 2 {
		t.Errorf("%d discovery retries logged, want 2", n)
	}
}

func TestKubeSourceRunCancelledBeforeSync(t *testing.T) {
	fc := newFakeCluster(t, true, nil, nil)
	fc.kube.PrependReactor("get", "resource", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fc.src.Run(ctx) }()
	// Cancel once Run is known to be in its retry loop.
	waitLog(t, fc.logs, "retrying")
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run cancelled before sync returned %v, want context.Canceled", err)
		}
	case <-time.After(kubeTestTimeout):
		t.Fatal("Run did not return after cancel")
	}
	if fc.idx.Synced() {
		t.Error("index synced although the source never loaded")
	}
}

// waitLog waits for a log entry; the observer has no notification, so this
// polls briefly, bounded by the test timeout.
func waitLog(t *testing.T, logs *observer.ObservedLogs, snippet string) {
	t.Helper()
	deadline := time.Now().Add(kubeTestTimeout)
	for logs.FilterMessageSnippet(snippet).Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no log entry containing %q", snippet)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestKubeSourceReportsWhyItIsNotSynced: while the API server refuses to
// list a resource, the Index holds an error naming the resource, the verb
// and the reason, and the source is not synced; once the list succeeds the
// error is gone and the source syncs.
func TestKubeSourceReportsWhyItIsNotSynced(t *testing.T) {
	kube, gw := allKinds()
	fc := newFakeCluster(t, true, kube, gw)
	var deny atomic.Bool
	deny.Store(true)
	fc.kube.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		if deny.Load() {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "",
				errors.New(`User "peerd" cannot list resource "pods" in API group "" at the cluster scope`))
		}
		return false, nil, nil
	})
	fc.run(t)

	podsError := func() string {
		for _, err := range fc.idx.Errors() {
			if strings.Contains(err.Error(), "kubernetes source: pods:") {
				return err.Error()
			}
		}
		return ""
	}
	pollUntil(t, "an error about pods in the index", func() bool { return podsError() != "" })
	for _, want := range []string{"forbidden", "list pods", "cannot list resource"} {
		if msg := podsError(); !strings.Contains(msg, want) {
			t.Errorf("pods error %q does not say %q", msg, want)
		}
	}
	if fc.idx.Synced() {
		t.Error("synced while pods cannot be listed")
	}
	if n := fc.logs.FilterMessageSnippet("list/watch failed").FilterField(zap.String("resource", "pods")).Len(); n == 0 {
		t.Errorf("the failure was not logged through zap: %v", fc.logs.All())
	}

	deny.Store(false)
	fc.waitSynced(t)
	if msg := podsError(); msg != "" {
		t.Errorf("still reported after pods could be listed: %s", msg)
	}
}

func TestExplainAPIError(t *testing.T) {
	refused := &url.Error{Op: "Get", URL: "https://127.0.0.1:6443/api/v1/pods", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	badCert := &url.Error{Op: "Get", URL: "https://127.0.0.1:6443/api/v1/pods", Err: x509.UnknownAuthorityError{}}
	tests := []struct {
		name string
		err  error
		want []string
	}{
		{"forbidden", apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "", errors.New("RBAC")), []string{"nodes: forbidden", "peerd watch nodes", "grant get, list and watch on nodes"}},
		{"unauthorized", apierrors.NewUnauthorized("token expired"), []string{"nodes: unauthorized", "credentials", "token expired"}},
		{"connection refused", refused, []string{"nodes: unreachable", "connection refused"}},
		{"unknown certificate authority", badCert, []string{"nodes: unreachable", "TLS", "certificate signed by unknown authority"}},
		{"wrapped by the reflector", fmt.Errorf("failed to list *v1.Node: %w", refused), []string{"nodes: unreachable"}},
		{"anything else", apierrors.NewInternalError(errors.New("etcd down")), []string{"nodes: watch failed", "etcd down"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := explainAPIError("nodes", "watch", tc.err)
			for _, w := range tc.want {
				if !strings.Contains(got.Error(), w) {
					t.Errorf("%q does not contain %q", got, w)
				}
			}
			if !errors.Is(got, tc.err) {
				t.Errorf("%q does not wrap the original error", got)
			}
		})
	}
}

// pollUntil polls cond (state with no change signal, such as Index errors)
// until it holds, failing after kubeTestTimeout.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(kubeTestTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
