package main

import (
	"embed"
	"io/fs"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
)

// web holds the tracking page: everything it needs is served from here (no
// map tiles, fonts or scripts from elsewhere).
//
//go:embed web
var web embed.FS

// pageHeaders are set on the tracking page: the token is in its URL, so it
// must not leak through a Referer, and the page may load nothing but its
// own assets and its own socket.
var pageHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
		"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
	"Referrer-Policy":        "no-referrer",
	"X-Content-Type-Options": "nosniff",
	"Cache-Control":          "no-store",
}

// handleTrackPage handles "GET /track/{order_id}": the page a customer
// opens (with ?token=) to watch the rider. The socket it opens checks the
// token; the page itself holds nothing secret.
func handleTrackPage() http.Handler {
	page, err := web.ReadFile("web/index.html")
	if err != nil {
		panic(err) // embedded at build time: cannot happen
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := uuid.Parse(chi.URLParam(r, "order_id")); err != nil {
			http.NotFound(w, r)
			return
		}
		for k, v := range pageHeaders {
			w.Header().Set(k, v)
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(page)
	})
}

// handleTrackAssets handles "GET /track/assets/*": the page's script and
// style sheet.
func handleTrackAssets() http.Handler {
	assets, err := fs.Sub(web, "web/assets")
	if err != nil {
		panic(err) // embedded at build time: cannot happen
	}
	files := http.StripPrefix("/track/assets/", http.FileServerFS(assets))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "public, max-age=300")
		files.ServeHTTP(w, r)
	})
}
