package httpx

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestShed: past maxInFlight requests being served, the next is answered
// at once with 503 and Retry-After; once one finishes, requests go through
// again.
func TestShed(t *testing.T) {
	release, entered := make(chan struct{}), make(chan struct{})
	h := Shed(1)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	done := make(chan int)
	go func() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/slow", nil))
		done <- w.Code
	}()
	<-entered
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/fast", nil))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "1" || w.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("while full: %d %v", w.Code, w.Header())
	}
	close(release)
	if code := <-done; code != http.StatusNoContent {
		t.Fatalf("the request in flight got %d", code)
	}
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/fast", nil))
	if w.Code != http.StatusNoContent {
		t.Fatalf("after: %d", w.Code)
	}
}

// TestReadBodyBeforeShed: a client that sends its body slowly holds no
// in-flight slot while it sends, so it cannot starve the others; a body
// too large is refused with 413.
func TestReadBodyBeforeShed(t *testing.T) {
	var got []string
	srv := httptest.NewServer(ReadBody(1 << 10)(Shed(1)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = append(got, string(b))
		w.WriteHeader(http.StatusNoContent)
	}))))
	defer srv.Close()
	slow, sending := io.Pipe()
	done := make(chan int)
	go func() {
		resp, err := http.Post(srv.URL, "application/json", slow)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	if _, err := sending.Write([]byte(`{"half":`)); err != nil {
		t.Fatal(err)
	}
	// The slow request is still sending: the one slot is free.
	for range 3 {
		resp, err := http.Post(srv.URL, "application/json", strings.NewReader(`{"fast":1}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("a request beside a slow sender = %d, want 204", resp.StatusCode)
		}
	}
	_, _ = sending.Write([]byte(`1}`))
	sending.Close()
	if code := <-done; code != http.StatusNoContent || got[len(got)-1] != `{"half":1}` {
		t.Fatalf("the slow request got %d, its handler read %q", code, got)
	}
	resp, err := http.Post(srv.URL, "application/json", strings.NewReader(strings.Repeat("x", 2<<10)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("a body over the limit = %d, want 413", resp.StatusCode)
	}
}
