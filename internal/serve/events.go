package serve

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
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
// snapshot the warning was computed from: `kubectl describe` matches events
// by UID.
func (e *warningEvents) record(w ambient.Warning, objs discovery.Objects) {
	ref := objectReference(w.Object, objs)
	if ref == nil {
		return
	}
	message := w.Message
	if w.Field != "" {
		message = w.Field + ": " + w.Message
	}
	e.recorder.Event(ref, corev1.EventTypeWarning, eventReason, message)
}

// objectReference finds the object a warning names; nil when it is gone.
func objectReference(r ambient.ObjectRef, objs discovery.Objects) *corev1.ObjectReference {
	find := func(kind, apiVersion, namespace, name string, uid types.UID) *corev1.ObjectReference {
		return &corev1.ObjectReference{Kind: kind, APIVersion: apiVersion, Namespace: namespace, Name: name, UID: uid}
	}
	switch r.Kind {
	case "service":
		for _, o := range objs.Services {
			if o.Namespace == r.Namespace && o.Name == r.Name {
				return find("Service", "v1", o.Namespace, o.Name, o.UID)
			}
		}
	case "namespace":
		for _, o := range objs.Namespaces {
			if o.Name == r.Name {
				return find("Namespace", "v1", "", o.Name, o.UID)
			}
		}
	case "pod":
		for _, o := range objs.Pods {
			if o.Namespace == r.Namespace && o.Name == r.Name {
				return find("Pod", "v1", o.Namespace, o.Name, o.UID)
			}
		}
	case "endpointslice":
		for _, o := range objs.EndpointSlices {
			if o.Namespace == r.Namespace && o.Name == r.Name {
				return find("EndpointSlice", "discovery.k8s.io/v1", o.Namespace, o.Name, o.UID)
			}
		}
	}
	return nil
}
