package main

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/dabba/dabba/shared/auth"
	"github.com/dabba/dabba/shared/httpx"
	"github.com/dabba/dabba/shared/postgres"
	"github.com/dabba/dabba/shared/token"
)

// Path sizes: what GET …/path returns by default and at most.
const (
	defaultPathPoints = 500
	maxPathPoints     = 5000
)

// PathPoint is one point of a delivery's path.
type PathPoint struct {
	Lat     float64   `json:"lat"`
	Lng     float64   `json:"lng"`
	Seq     int64     `json:"seq"`
	TS      time.Time `json:"ts"`
	RiderID string    `json:"rider_id"`
}

// Path is the way a delivery's rider travelled, oldest point first.
type Path struct {
	OrderID string      `json:"order_id"`
	Points  []PathPoint `json:"points"`
	// Fixes is how many fixes were stored; when there are more than the
	// points asked for, the path is thinned to the points that shape it.
	Fixes   int  `json:"fixes"`
	Thinned bool `json:"thinned"`
}

// handlePath handles "GET /v1/orders/{id}/path?max=N": the path the order's
// rider travelled while delivering it, thinned to at most N points (default
// 500, at most 5,000), for the order's tracking token, its customer or an
// operator (the route's guard has checked the token and its role); another
// order's tracking token or another customer is 403.
func handlePath(log *zap.Logger, db *pgxpool.Pool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := uuid.Parse(chi.URLParam(r, "id"))
		if err != nil {
			httpx.WriteProblem(w, httpx.FieldProblem("id", "must be a UUID"))
			return
		}
		orderID := id.String()
		p, _ := auth.From(r.Context())
		switch p.Role {
		case token.AudienceTrack:
			if p.ID != orderID {
				httpx.WriteProblem(w, auth.Forbidden("this tracking token is for another order"))
				return
			}
		case token.AudienceCustomer:
			var customer string
			err := db.QueryRow(r.Context(), "SELECT customer_id FROM orders WHERE id = $1", orderID).Scan(&customer)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				httpx.Error(w, r, log, fmt.Errorf("read order: %w", err))
				return
			}
			if customer != p.ID {
				httpx.WriteProblem(w, auth.Forbidden("this is another customer's order"))
				return
			}
		}
		limit := defaultPathPoints
		if s := r.URL.Query().Get("max"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 2 || n > maxPathPoints {
				httpx.WriteProblem(w, httpx.FieldProblem("max", fmt.Sprintf("must be an integer from 2 to %d", maxPathPoints)))
				return
			}
			limit = n
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		points, err := loadPath(ctx, db, orderID)
		if err != nil {
			if postgres.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) {
				httpx.WriteProblem(w, httpx.Unavailable("the path"))
				return
			}
			httpx.Error(w, r, log, err)
			return
		}
		path := Path{OrderID: orderID, Points: thin(points, limit), Fixes: len(points)}
		path.Thinned = len(path.Points) < len(points)
		w.Header().Set("Cache-Control", "no-store")
		httpx.Encode(w, http.StatusOK, path)
	})
}

// loadPath reads an order's stored fixes, each once (two instances may both
// have stored a fix a rider sent twice), in the rider's order (seq; the
// broker and the network may have brought them in another), and a rider
// assigned later after the one before.
func loadPath(ctx context.Context, db *pgxpool.Pool, orderID string) ([]PathPoint, error) {
	rows, err := db.Query(ctx, `SELECT lat, lng, seq, ts, rider_id FROM (
			SELECT DISTINCT ON (rider_id, seq) lat, lng, seq, ts, rider_id, at
			FROM rider_fixes WHERE order_id = $1 ORDER BY rider_id, seq, at) f
		ORDER BY min(at) OVER (PARTITION BY rider_id), rider_id, seq`, orderID)
	if err != nil {
		return nil, fmt.Errorf("read path: %w", err)
	}
	points, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (PathPoint, error) {
		var p PathPoint
		err := row.Scan(&p.Lat, &p.Lng, &p.Seq, &p.TS, &p.RiderID)
		p.TS = p.TS.UTC()
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("read path: %w", err)
	}
	if points == nil {
		points = []PathPoint{} // no fix yet is [], not null
	}
	return points, nil
}

// thin returns at most limit of points: it removes, one at a time, the
// point whose removal changes the line least (the smallest triangle it
// makes with its neighbours: Visvalingam-Whyatt), so the path keeps its
// shape, turns and ends, while a rider waiting at a kitchen or riding
// straight costs few points.
func thin(points []PathPoint, limit int) []PathPoint {
	n := len(points)
	if n <= limit || limit < 2 {
		return points
	}
	// Areas in a local plane, metres-ish: longitudes shrink with latitude.
	k := math.Cos(points[0].Lat * math.Pi / 180)
	area := func(a, b, c PathPoint) float64 {
		return math.Abs((b.Lng-a.Lng)*k*(c.Lat-a.Lat)-(c.Lng-a.Lng)*k*(b.Lat-a.Lat)) / 2
	}
	prev, next := make([]int, n), make([]int, n)
	items := make([]*thinItem, n)
	h := make(thinHeap, 0, n)
	for i := range points {
		prev[i], next[i] = i-1, i+1
		if i > 0 && i < n-1 {
			items[i] = &thinItem{i: i, area: area(points[i-1], points[i], points[i+1])}
			h = append(h, items[i])
			items[i].pos = len(h) - 1
		}
	}
	heap.Init(&h)
	removed := make([]bool, n)
	for left := n; left > limit; left-- {
		it := heap.Pop(&h).(*thinItem)
		removed[it.i] = true
		p, q := prev[it.i], next[it.i]
		next[p], prev[q] = q, p
		// A neighbour's area never falls below the one removed, so the
		// points go in order of the line they shape.
		for _, j := range []int{p, q} {
			if items[j] != nil && !removed[j] {
				items[j].area = max(it.area, area(points[prev[j]], points[j], points[next[j]]))
				heap.Fix(&h, items[j].pos)
			}
		}
	}
	out := make([]PathPoint, 0, limit)
	for i, p := range points {
		if !removed[i] {
			out = append(out, p)
		}
	}
	return out
}

type thinItem struct {
	i, pos int
	area   float64
}

// thinHeap orders the inner points by the area of their triangle, ties
// by their place on the path.
type thinHeap []*thinItem

func (h thinHeap) Len() int { return len(h) }
func (h thinHeap) Less(a, b int) bool {
	return h[a].area < h[b].area || h[a].area == h[b].area && h[a].i < h[b].i
}
func (h thinHeap) Swap(a, b int) {
	h[a], h[b] = h[b], h[a]
	h[a].pos, h[b].pos = a, b
}
func (h *thinHeap) Push(x any) {
	it := x.(*thinItem)
	it.pos = len(*h)
	*h = append(*h, it)
}
func (h *thinHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}
