// Package logging builds the zap logger every service uses from its
// environment: JSON in production, console for people.
package logging

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a logger for service configured by LOG_FORMAT ("json" or
// "console", the default) and LOG_LEVEL (debug, info, warn, error; info).
func New(getenv func(string) string, service string) (*zap.Logger, error) {
	var cfg zap.Config
	switch f := getenv("LOG_FORMAT"); f {
	case "json":
		cfg = zap.NewProductionConfig()
		cfg.DisableStacktrace = true // errors carry their context; traces drown it
		cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	case "", "console":
		cfg = zap.NewDevelopmentConfig()
		cfg.DisableStacktrace = true
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
	default:
		return nil, fmt.Errorf("LOG_FORMAT %q: want json or console", f)
	}
	cfg.Sampling = nil
	if lvl := getenv("LOG_LEVEL"); lvl != "" {
		l, err := zapcore.ParseLevel(lvl)
		if err != nil {
			return nil, fmt.Errorf("LOG_LEVEL: %w", err)
		}
		cfg.Level = zap.NewAtomicLevelAt(l)
	} else {
		cfg.Level = zap.NewAtomicLevelAt(zap.InfoLevel)
	}
	log, err := cfg.Build()
	if err != nil {
		return nil, fmt.Errorf("build logger: %w", err)
	}
	return log.With(zap.String("service", service)), nil
}
