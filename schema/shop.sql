-- Demo schema of the e-commerce shop whose tables cdc-indexer streams into Elasticsearch.
--
-- Load it with `mariadb < schema/shop.sql`. The test kit (`testkit::sample::create_shop_schema`)
-- runs the table statements below inside a database of its own choosing, so keep them
-- unqualified, end every statement with `;` at the end of a line, and put no `;` inside them.

CREATE DATABASE IF NOT EXISTS shop CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE shop;

CREATE TABLE IF NOT EXISTS orders (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    order_no    VARCHAR(32)     NOT NULL,
    buyer_name  VARCHAR(64)     NOT NULL,
    buyer_phone VARCHAR(32)     NOT NULL,
    address     VARCHAR(255)    NOT NULL,
    amount      DECIMAL(18,2)   NOT NULL,
    status      ENUM('pending','paid','shipped','completed','cancelled','refunded') NOT NULL DEFAULT 'pending',
    created_at  DATETIME        NOT NULL,
    paid_at     DATETIME        NULL,
    shipped_at  DATETIME        NULL,
    updated_at  DATETIME(3)     NOT NULL,
    remark      TEXT            NULL,
    -- Product titles, quantities and prices, e.g. [{"title":"…","qty":1,"price":"6999.00"}].
    items       JSON            NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_order_no (order_no)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS event_log (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    order_id    BIGINT UNSIGNED NOT NULL,
    event_type  VARCHAR(32)     NOT NULL,
    payload     JSON            NOT NULL,
    -- NULL for events raised by the buyer or the system rather than by staff.
    operator_id INT             NULL,
    occurred_at DATETIME(3)     NOT NULL,
    PRIMARY KEY (id),
    KEY idx_order_id (order_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
