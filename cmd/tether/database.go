package main

import (
	"context"
	"time"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/devices/database"
)

// openDatabase opens the stores' database: PostgreSQL when
// storage.postgres_url is set (--postgres), else data_dir's SQLite file.
func openDatabase(cfg configs.Config) (*devices.DB, error) {
	if cfg.Storage.PostgresURL == "" {
		return devices.OpenDB(cfg.DataDir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return database.OpenPostgres(ctx, cfg.Storage.PostgresURL)
}
