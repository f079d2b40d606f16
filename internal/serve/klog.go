package serve

import (
	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"k8s.io/klog/v2"
)

// RouteKlog sends everything client-go logs through klog (reflector list and
// watch failures, deprecation warnings, runtime.HandleError) to log, so that
// peerd's output stays one structured stream instead of interleaving klog's
// plain-text lines on stderr. klog is process-global, so the command calls
// this once, before any client is built.
//
// klog's verbosity levels map to zap levels below Debug (V(2) is zap level
// -2), so client-go's chatty V(n) messages stay off unless asked for.
func RouteKlog(log *zap.Logger) {
	named := log.Named("klog")
	// ContextualLogger: client-go increasingly asks klog.FromContext for a
	// logger; with this option it gets ours directly rather than a shim that
	// formats through klog first.
	klog.SetLoggerWithOptions(zapr.NewLogger(named),
		klog.ContextualLogger(true),
		klog.FlushLogger(func() { _ = named.Sync() }))
}
