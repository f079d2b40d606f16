package serve

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/peerd-mesh/peerd/internal/discovery/peers"
	"github.com/peerd-mesh/peerd/internal/federation"
)

// TestLinkConditions: one row per link state, in the order of the brief's
// mapping (peers.State → Connected, Synced), each with the words its
// message must carry.
func TestLinkConditions(t *testing.T) {
	withdrawAt := time.Date(2026, 12, 4, 13, 0, 0, 0, time.UTC)
	base := peers.LinkStatus{Gateway: "istio-system/cluster2", Cluster: "cluster2", Address: "10.0.0.2:15012"}
	with := func(f func(*peers.LinkStatus)) peers.LinkStatus {
		st := base
		f(&st)
		return st
	}
	type cond struct {
		status metav1.ConditionStatus
		reason string
	}
	for _, tc := range []struct {
		name              string
		link              peers.LinkStatus
		connected, synced cond
		message           []string
	}{
		{
			name:      "synced → Connected True/Connected, Synced True/Synced",
			link:      with(func(s *peers.LinkStatus) { s.State = peers.StateSynced; s.LastError = "an old failure" }),
			connected: cond{metav1.ConditionTrue, federation.ReasonConnected},
			synced:    cond{metav1.ConditionTrue, federation.ReasonSynced},
			message:   []string{"synced with cluster cluster2 at 10.0.0.2:15012"},
		},
		{
			name:      "connecting → Connected False/Connecting, Synced False/Connecting",
			link:      with(func(s *peers.LinkStatus) { s.State = peers.StateConnecting; s.LastError = "connection refused" }),
			connected: cond{metav1.ConditionFalse, federation.ReasonConnecting},
			synced:    cond{metav1.ConditionFalse, federation.ReasonConnecting},
			message:   []string{"connecting to cluster cluster2 at 10.0.0.2:15012", "connection refused"},
		},
		{
			name: "stale → Connected False/Disconnected, Synced False/Stale",
			link: with(func(s *peers.LinkStatus) {
				s.State = peers.StateStale
				s.LastError = "stream reset"
				s.WithdrawAt = withdrawAt
			}),
			connected: cond{metav1.ConditionFalse, federation.ReasonDisconnected},
			synced:    cond{metav1.ConditionFalse, federation.ReasonStale},
			message:   []string{"stream reset", "kept", "2026-12-04T13:00:00Z"},
		},
		{
			name:      "withdrawn → Connected False/Disconnected, Synced False/Withdrawn",
			link:      with(func(s *peers.LinkStatus) { s.State = peers.StateWithdrawn; s.LastError = "i/o timeout" }),
			connected: cond{metav1.ConditionFalse, federation.ReasonDisconnected},
			synced:    cond{metav1.ConditionFalse, federation.ReasonWithdrawn},
			message:   []string{"i/o timeout", "withdrawn"},
		},
		{
			name: "rejected → Connected False/Rejected, Synced False/Rejected",
			link: with(func(s *peers.LinkStatus) {
				s.State = peers.StateRejected
				s.Reason = peers.ReasonTLS
				s.LastError = "x509: certificate signed by unknown authority"
			}),
			connected: cond{metav1.ConditionFalse, federation.ReasonRejected},
			synced:    cond{metav1.ConditionFalse, federation.ReasonRejected},
			message:   []string{"rejected (tls)", "x509: certificate signed by unknown authority"},
		},
		{
			name:      "invalid Gateway → Synced False/Rejected with the parse error",
			link:      peers.LinkStatus{Gateway: "istio-system/broken", State: peers.StateInvalid, LastError: `listener "xds-tls": no port`},
			connected: cond{metav1.ConditionFalse, federation.ReasonRejected},
			synced:    cond{metav1.ConditionFalse, federation.ReasonRejected},
			message:   []string{"cannot be read as a link", `listener "xds-tls": no port`},
		},
		{
			name: "a running link with a bad edit names the Gateway's problem too",
			link: with(func(s *peers.LinkStatus) {
				s.State = peers.StateSynced
				s.GatewayError = "annotation gateway.istio.io/trust-domain: empty"
			}),
			connected: cond{metav1.ConditionTrue, federation.ReasonConnected},
			synced:    cond{metav1.ConditionTrue, federation.ReasonSynced},
			message:   []string{"synced with", "last good configuration", "trust-domain: empty"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := linkConditions(tc.link)
			if len(got) != 2 || got[0].Type != federation.ConditionConnected || got[1].Type != federation.ConditionSynced {
				t.Fatalf("conditions = %+v, want %s then %s", got, federation.ConditionConnected, federation.ConditionSynced)
			}
			for i, want := range []cond{tc.connected, tc.synced} {
				if c := got[i]; c.Status != want.status || c.Reason != want.reason {
					t.Errorf("%s = %s/%s, want %s/%s", c.Type, c.Status, c.Reason, want.status, want.reason)
				}
				for _, w := range tc.message {
					if !strings.Contains(got[i].Message, w) {
						t.Errorf("%s message %q does not mention %q", got[i].Type, got[i].Message, w)
					}
				}
			}
			if tc.link.State == peers.StateSynced && strings.Contains(got[1].Message, tc.link.LastError) && tc.link.LastError != "" {
				t.Errorf("a synced link's message %q repeats an old error", got[1].Message)
			}
		})
	}
}

// TestLinkConditionsLeaveOutWhatChangesWithoutTheState: a synced link's
// every update moves LastMessage and may change the count of services; the
// conditions must compare equal so that no write follows.
func TestLinkConditionsLeaveOutWhatChangesWithoutTheState(t *testing.T) {
	a := peers.LinkStatus{Gateway: "istio-system/cluster2", Cluster: "cluster2", State: peers.StateSynced,
		LastMessage: time.Unix(100, 0), Services: 3, Failures: 1}
	b := a
	b.LastMessage, b.Services, b.Failures, b.Since = time.Unix(200, 0), 4, 2, time.Unix(50, 0)
	ca, cb := linkConditions(a), linkConditions(b)
	for i := range ca {
		if ca[i] != cb[i] {
			t.Errorf("conditions differ: %+v vs %+v", ca[i], cb[i])
		}
	}
}

func TestLastMessageSuffix(t *testing.T) {
	if got := lastMessageSuffix(time.Time{}); !strings.Contains(got, "no message") {
		t.Errorf("no message yet: %q", got)
	}
	at := time.Date(2026, 12, 4, 12, 0, 5, 0, time.FixedZone("x", 3600))
	if got := lastMessageSuffix(at); !strings.Contains(got, "2026-12-04T11:00:05Z") {
		t.Errorf("suffix %q does not give the time in RFC 3339 UTC", got)
	}
}
