package httpx

import (
	"net/http"
	"net/http/httptest"
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
