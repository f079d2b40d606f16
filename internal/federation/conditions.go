package federation

// A link's live state, as peerd writes it into the status of the link's
// istio-remote Gateway (status.conditions) so that operators and
// `peerd check` read it from the Kubernetes API without reaching peerd.
// The types are peerd's own, domain-prefixed, so they never collide with a
// condition istiod writes on the same Gateway (Accepted, Programmed).
const (
	// ConditionConnected is True while the link's stream to the peer is up.
	ConditionConnected = "peerd.io/Connected"
	// ConditionSynced is True only while the link is synced: the peer's
	// whole export has been received and is current.
	ConditionSynced = "peerd.io/Synced"
)

// Reasons of the link conditions. ConditionSynced uses ReasonConnecting,
// ReasonSynced, ReasonStale, ReasonRejected and ReasonWithdrawn;
// ConditionConnected uses ReasonConnected, ReasonConnecting,
// ReasonDisconnected and ReasonRejected. The message names the cause (the
// TLS error, say) and the time of the last message from the peer.
const (
	ReasonConnecting   = "Connecting"
	ReasonConnected    = "Connected"
	ReasonDisconnected = "Disconnected"
	ReasonSynced       = "Synced"
	ReasonStale        = "Stale"
	ReasonRejected     = "Rejected"
	ReasonWithdrawn    = "Withdrawn"
)
