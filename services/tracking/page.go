package main

import (
	"bytes"
	"embed"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
)

// web holds the tracking page: its script and style sheet are built with
// Leaflet from web-src (npm run build there) and committed, so go build
// needs no npm. The page loads nothing from elsewhere but map tiles.
//
//go:embed web
var web embed.FS

// Map tiles: OpenStreetMap's own tile server unless TRACKING_TILE_URL names
// another ("none": no tiles, the page draws a grid).
const (
	defaultTileURL         = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
	defaultTileAttribution = `&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors`
)

// pageConfig is what the page is told of the map, in data attributes (a
// strict CSP allows no inline script).
type pageConfig struct {
	TileURL     string // Leaflet's template, {z}/{x}/{y} (and {s}); "" for none
	Attribution string // HTML, as the tile server's terms ask
}

// pageHeaders are set on the tracking page. The token is in its URL, so a
// Referer carries the origin only (tile servers ask for one; the path and
// its token never leave), and the page may load nothing but its own assets,
// its own socket and path, and the tile server's images.
func pageHeaders(cfg pageConfig) map[string]string {
	img := "'self' data:"
	if o := tileOrigin(cfg.TileURL); o != "" {
		img += " " + o
	}
	return map[string]string{
		"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src " + img + "; " +
			"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
		"Referrer-Policy":        "strict-origin",
		"X-Content-Type-Options": "nosniff",
		"Cache-Control":          "no-store",
	}
}

// tileOrigin is the origin the page's CSP must allow images from for
// tileURL: its scheme and host, with {s} (subdomains) as a wildcard.
func tileOrigin(tileURL string) string {
	u, err := url.Parse(strings.ReplaceAll(tileURL, "{s}", "sub"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return ""
	}
	host := u.Host
	if strings.Contains(tileURL, "{s}.") {
		host = strings.Replace(host, "sub.", "*.", 1)
	}
	return u.Scheme + "://" + host
}

// handleTrackPage handles "GET /track/{order_id}": the page a customer
// opens (with ?token=) to watch the rider. The socket it opens checks the
// token; the page itself holds nothing secret.
func handleTrackPage(cfg pageConfig) http.Handler {
	page := template.Must(template.ParseFS(web, "web/index.html"))
	var buf bytes.Buffer
	if err := page.Execute(&buf, cfg); err != nil {
		panic(err) // embedded at build time, with two strings: cannot fail
	}
	body, headers := buf.Bytes(), pageHeaders(cfg)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := uuid.Parse(chi.URLParam(r, "order_id")); err != nil {
			http.NotFound(w, r)
			return
		}
		for k, v := range headers {
			w.Header().Set(k, v)
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(body)
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
