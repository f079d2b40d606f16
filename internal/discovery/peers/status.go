package peers

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
)

// LinkStatus is one link's (or unreadable Gateway's) state, for
// /debug/peers and `peerd view`.
type LinkStatus struct {
	Gateway string `json:"gateway"`
	Cluster string `json:"cluster,omitempty"`
	Network string `json:"network,omitempty"`
	// Address is what the link dials (host:port).
	Address string `json:"address,omitempty"`
	State   State  `json:"state"`
	// Reason is why the link is rejected.
	Reason string `json:"reason,omitempty"`
	// Since is when the link entered State.
	Since       time.Time `json:"since,omitzero"`
	LastMessage time.Time `json:"lastMessage,omitzero"`
	LastError   string    `json:"lastError,omitempty"`
	Failures    int       `json:"failures"`
	// Services is the number of imported services held (in the index).
	Services int `json:"services"`
	// WithdrawAt is when the services of a lost link will be withdrawn.
	WithdrawAt time.Time `json:"withdrawAt,omitzero"`
	// Rejections counts rejections by reason (Reason constants).
	Rejections map[string]int `json:"rejections,omitempty"`
	// GatewayError is the Gateway's current problem: for a running link,
	// its last good configuration is in use.
	GatewayError string `json:"gatewayError,omitempty"`
}

// Status returns every link and every unreadable istio-remote Gateway,
// sorted by Gateway.
func (m *Manager) Status() []LinkStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]LinkStatus, 0, len(m.links)+len(m.problems))
	for name, l := range m.links {
		l.mu.Lock()
		st := LinkStatus{
			Gateway:     name,
			Cluster:     l.cluster,
			Network:     l.cfg.Network,
			Address:     l.cfg.Dial(),
			State:       l.state,
			Reason:      l.reason,
			Since:       l.since,
			LastMessage: l.lastMessage,
			LastError:   l.lastError,
			Failures:    l.failures,
			Services:    len(l.resources),
		}
		if !l.lostAt.IsZero() && !l.expired {
			st.WithdrawAt = l.lostAt.Add(m.opts.StaleTTL)
		}
		if len(l.rejections) > 0 {
			st.Rejections = maps.Clone(l.rejections)
		}
		l.mu.Unlock()
		if err := m.problems[name]; err != nil {
			st.GatewayError = err.Error()
		}
		out = append(out, st)
	}
	for name, err := range m.problems {
		if m.links[name] == nil {
			out = append(out, LinkStatus{Gateway: name, State: StateInvalid, LastError: err.Error()})
		}
	}
	slices.SortFunc(out, func(a, b LinkStatus) int { return strings.Compare(a.Gateway, b.Gateway) })
	return out
}

// ServeHTTP writes Status as JSON: mount the Manager at /debug/peers.
func (m *Manager) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(m.Status()) // a failed write is the client's loss only
}
