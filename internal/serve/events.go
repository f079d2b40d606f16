package serve

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
)

// eventReason is the reason of every Kubernetes Event peerd records for a
// model warning, so operators can find them with a field selector.
const eventReason = "PeerdInvalidConfig"

// warningEvents records model warnings as Kubernetes Warning Events on the
// object they are about, where `kubectl describe` shows them. It exists only
// when the source is a Kubernetes API server.
type warningEvents struct {
	recorder record.EventRecorder
}

// startWarningEvents starts an event broadcaster that writes to the API
// server until ctx ends.
func startWarningEvents(ctx context.Context, cfg *rest.Config) (*warningEvents, error) {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	go func() {
		<-ctx.Done()
		broadcaster.Shutdown()
	}()
	return &warningEvents{recorder: broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "peerd"})}, nil
}

// record emits one Warning Event for w. The object's UID comes from the
// index: `kubectl describe` matches events by UID.
func (e *warningEvents) record(w ambient.Warning, index *discovery.Index) {
	ref := objectReference(w.Object, index)
	if ref == nil {
		return
	}
	message := w.Message
	if w.Field != "" {
		message = w.Field + ": " + w.Message
	}
	e.recorder.Event(ref, corev1.EventTypeWarning, eventReason, message)
}

// eventKinds maps the model's object kinds to the index's kinds and the API
// group/version Events refer to them by.
var eventKinds = map[string]struct {
	kind       discovery.Kind
	apiVersion string
}{
	ambient.KindService:       {discovery.KindService, "v1"},
	ambient.KindNamespace:     {discovery.KindNamespace, "v1"},
	ambient.KindPod:           {discovery.KindPod, "v1"},
	ambient.KindNode:          {discovery.KindNode, "v1"},
	ambient.KindEndpointSlice: {discovery.KindEndpointSlice, "discovery.k8s.io/v1"},
	ambient.KindGateway:       {discovery.KindGateway, "gateway.networking.k8s.io/v1"},
}

// objectReference finds the object a warning names; nil when it is gone.
func objectReference(r ambient.ObjectRef, index *discovery.Index) *corev1.ObjectReference {
	k, ok := eventKinds[r.Kind]
	if !ok {
		return nil
	}
	obj := index.Get(discovery.Key{Kind: k.kind, Namespace: r.Namespace, Name: r.Name})
	if obj == nil {
		return nil
	}
	m, err := apimeta.Accessor(obj)
	if err != nil {
		return nil
	}
	return &corev1.ObjectReference{Kind: string(k.kind), APIVersion: k.apiVersion, Namespace: m.GetNamespace(), Name: m.GetName(), UID: m.GetUID()}
}
