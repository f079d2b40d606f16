package bench

import (
	"testing"
	"time"
)

func TestMs(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "-"},
		{1500 * time.Microsecond, "1.50 ms"},
		{42 * time.Millisecond, "42.0 ms"},
		{1234 * time.Millisecond, "1234 ms"},
		{339254 * time.Millisecond, "339 s"},
	}
	for _, tt := range tests {
		if got := ms(tt.d); got != tt.want {
			t.Errorf("ms(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}
