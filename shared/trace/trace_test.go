package trace

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestValid(t *testing.T) {
	tests := []struct {
		give string
		want bool
	}{
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", true},
		{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", false}, // version 00 is exactly 55
		{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", false},
		{"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", false},
		{"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := Valid(tt.give); got != tt.want {
			t.Errorf("Valid(%q) = %v, want %v", tt.give, got, tt.want)
		}
	}
}

func TestNewAndChild(t *testing.T) {
	a, b := New(), New()
	if !Valid(a) || !Valid(b) || TraceID(a) == TraceID(b) {
		t.Fatalf("New gave %q and %q", a, b)
	}
	parent := "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future"
	c := Child(parent)
	if !Valid(c) || len(c) != size || c[:2] != "00" {
		t.Fatalf("Child(%q) = %q, want a version-00 traceparent", parent, c)
	}
	if TraceID(c) != "4bf92f3577b34da6a3ce929d0e0e4736" || c[36:52] == parent[36:52] || c[53:] != "00" {
		t.Errorf("Child(%q) = %q: want the same trace and flags, a new span", parent, c)
	}
	if g := Child("garbage"); !Valid(g) {
		t.Errorf("Child(garbage) = %q, want a new trace", g)
	}
}

func TestMiddleware(t *testing.T) {
	const in = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	var got string
	h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = FromContext(r.Context()) }))
	t.Run("Continue", func(t *testing.T) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set(Header, in)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if TraceID(got) != TraceID(in) || got == in || w.Header().Get(Header) != got {
			t.Errorf("span %q, response header %q; want a child of %q", got, w.Header().Get(Header), in)
		}
	})
	t.Run("Start", func(t *testing.T) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set(Header, "nonsense")
		h.ServeHTTP(httptest.NewRecorder(), r)
		if !Valid(got) {
			t.Errorf("span %q, want a new trace", got)
		}
	})
	if FromContext(context.Background()) != "" {
		t.Error("FromContext of a bare context is not empty")
	}
}

func FuzzValid(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Fuzz(func(t *testing.T, s string) {
		if Valid(s) && !Valid(Child(s)) {
			t.Errorf("Child(%q) = %q is invalid", s, Child(s))
		}
		_ = TraceID(s)
	})
}
