//! A generator of seed-shaped e-commerce events (seed §4): behaviour events and order events
//! whose orders are created, then mostly paid a few seconds later. Deterministic for a seed.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const PRODUCTS: &[(&str, &str, &str, i64)] = &[
    ("prod_iphone15", "iPhone 15 Pro", "cat_phone", 699_900),
    ("prod_mate60", "Mate 60 Pro", "cat_phone", 599_900),
    ("prod_xiaomi14", "Xiaomi 14", "cat_phone", 399_900),
    ("prod_airpods", "AirPods Pro", "cat_audio", 189_900),
    ("prod_sonyxm5", "Sony WH-1000XM5", "cat_audio", 249_900),
    ("prod_macbook", "MacBook Air 15", "cat_laptop", 1_049_900),
    ("prod_thinkpad", "ThinkPad X1", "cat_laptop", 1_299_900),
    ("prod_ipad", "iPad Air", "cat_tablet", 479_900),
    ("prod_kindle", "Kindle Paperwhite", "cat_tablet", 109_900),
    ("prod_switch", "Switch OLED", "cat_game", 259_900),
    ("prod_ps5", "PlayStation 5", "cat_game", 389_900),
    ("prod_watch", "Apple Watch 9", "cat_wearable", 299_900),
    ("prod_band8", "Mi Band 8", "cat_wearable", 23_900),
    ("prod_tshirt", "Cotton T-shirt", "cat_apparel", 9_900),
    ("prod_sneaker", "Running Shoes", "cat_apparel", 59_900),
    ("prod_coffee", "Coffee Beans 1kg", "cat_food", 12_900),
    ("prod_tea", "Longjing Tea", "cat_food", 29_900),
    ("prod_cable", "USB-C Cable", "cat_accessory", 4_900),
    ("prod_charger", "65W Charger", "cat_accessory", 14_900),
    ("prod_case", "Phone Case", "cat_accessory", 3_900),
];
const EVENT_TYPES: &[&str] = &[
    "view", "view", "view", "click", "click", "search", "cart", "favorite",
];
const PLATFORMS: &[&str] = &["ios", "android", "web", "miniapp"];
const CITIES: &[(&str, &str, &str)] = &[
    ("北京市", "北京市", "朝阳区"),
    ("上海市", "上海市", "浦东新区"),
    ("广东省", "深圳市", "南山区"),
    ("浙江省", "杭州市", "西湖区"),
];

/// One generated message.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Which source it belongs to (`behavior` or `orders`).
    pub source: &'static str,
    /// Message key (the user id: the seed partitions by user).
    pub key: String,
    /// The event (for a deliberately malformed one, its text as a JSON string).
    pub value: Value,
}

impl Generated {
    /// The message bytes: the event as JSON (a malformed event's text as it is).
    pub fn payload(&self) -> Vec<u8> {
        match &self.value {
            Value::String(text) => text.as_bytes().to_vec(),
            v => serde_json::to_vec(v).unwrap_or_default(),
        }
    }
}

/// Seed-shaped event generator.
pub struct Generator {
    rng: StdRng,
    /// Distinguishes the event ids of generators with different seeds (demo restarts).
    run: u32,
    users: u32,
    next_event: u64,
    next_order: u64,
    pending_paid: VecDeque<(i64, Value)>,
    malformed_every: u64,
    produced: u64,
}

fn money(units: i64) -> Value {
    // exact two-decimal JSON numbers such as 6999.00 → 6999.0 (serde_json prints f64)
    json!(units as f64 / 100.0)
}

impl Generator {
    /// A generator for `users` distinct users, deterministic for `seed`.
    pub fn new(seed: u64, users: u32) -> Generator {
        let mut rng = StdRng::seed_from_u64(seed);
        Generator {
            run: rng.random(),
            rng,
            users: users.max(1),
            next_event: 0,
            next_order: 0,
            pending_paid: VecDeque::new(),
            malformed_every: 0,
            produced: 0,
        }
    }

    /// Makes every `n`-th message malformed (alternately not JSON, and an order with a
    /// negative amount), to show the quarantine; 0 turns this off (the default).
    pub fn with_malformed_every(mut self, n: u64) -> Generator {
        self.malformed_every = n;
        self
    }

    /// The next message at wall-clock `now_ms`: a due payment, else a behaviour event (80 %)
    /// or a new order (20 %; 85 % of orders are paid 1–20 s later).
    pub fn next(&mut self, now_ms: i64) -> Generated {
        self.produced += 1;
        if self.malformed_every > 0 && self.produced.is_multiple_of(self.malformed_every) {
            let bad = if (self.produced / self.malformed_every).is_multiple_of(2) {
                Value::String(format!(
                    "{{\"eventId\": \"evt_broken_{}\", \"userId\": ",
                    self.produced
                ))
            } else {
                json!({"orderId": format!("ord_bad_{}", self.produced), "userId": "user_00000",
                       "orderStatus": "created", "createTime": now_ms, "totalAmount": -1.0,
                       "currency": "CNY", "items": []})
            };
            let source = if bad.is_string() {
                "behavior"
            } else {
                "orders"
            };
            return Generated {
                source,
                key: "user_00000".into(),
                value: bad,
            };
        }
        if self
            .pending_paid
            .front()
            .is_some_and(|(due, _)| *due <= now_ms)
            && let Some((_, mut order)) = self.pending_paid.pop_front()
        {
            order["orderStatus"] = json!("paid");
            order["payTime"] = json!(now_ms);
            let key = order["userId"].as_str().unwrap_or_default().to_string();
            return Generated {
                source: "orders",
                key,
                value: order,
            };
        }
        let user = format!("user_{:05}", self.rng.random_range(0..self.users));
        if self.rng.random_bool(0.8) {
            self.next_event += 1;
            let (pid, _, cat, _) = PRODUCTS[self.rng.random_range(0..PRODUCTS.len())];
            let platform = PLATFORMS[self.rng.random_range(0..PLATFORMS.len())];
            let value = json!({
                "eventId": format!("evt_{:08x}_{:010}", self.run, self.next_event),
                "userId": user,
                "sessionId": format!("session_{}_{}", user, now_ms / 1_800_000),
                "eventType": EVENT_TYPES[self.rng.random_range(0..EVENT_TYPES.len())],
                "productId": pid,
                "categoryId": cat,
                "timestamp": now_ms,
                "deviceInfo": {"platform": platform, "version": "14.5", "userAgent": "Mozilla/5.0"},
                "pageInfo": {"pageUrl": format!("/product/{pid}"), "referrer": format!("/category/{cat}"),
                             "position": format!("recommendation_slot_{}", self.rng.random_range(1..6))},
            });
            return Generated {
                source: "behavior",
                key: user,
                value,
            };
        }
        self.next_order += 1;
        let n = self.rng.random_range(1..4);
        let mut items = Vec::new();
        let mut total = 0;
        for _ in 0..n {
            let (pid, name, cat, price) = PRODUCTS[self.rng.random_range(0..PRODUCTS.len())];
            let qty = self.rng.random_range(1..4);
            total += price * qty;
            items.push(
                json!({"productId": pid, "productName": name, "quantity": qty,
                              "price": money(price), "categoryId": cat}),
            );
        }
        let (province, city, district) = CITIES[self.rng.random_range(0..CITIES.len())];
        let order = json!({
            "orderId": format!("ord_{now_ms}_{:08x}_{:06}", self.run, self.next_order),
            "userId": user,
            "orderStatus": "created",
            "createTime": now_ms,
            "payTime": null,
            "totalAmount": money(total),
            "currency": "CNY",
            "items": items,
            "shippingAddress": {"province": province, "city": city, "district": district},
        });
        if self.rng.random_bool(0.85) {
            let due = now_ms + self.rng.random_range(1_000..20_000);
            let at = self.pending_paid.partition_point(|(d, _)| *d <= due);
            self.pending_paid.insert(at, (due, order.clone()));
        }
        Generated {
            source: "orders",
            key: user,
            value: order,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_events_when_asked() {
        let mut g = Generator::new(1, 10).with_malformed_every(3);
        let payloads: Vec<Vec<u8>> = (0..6)
            .map(|i| g.next(1_700_000_000_000 + i).payload())
            .collect();
        assert!(
            serde_json::from_slice::<Value>(&payloads[2]).is_ok(),
            "negative amount, valid JSON"
        );
        assert!(String::from_utf8_lossy(&payloads[2]).contains("-1.0"));
        assert!(
            serde_json::from_slice::<Value>(&payloads[5]).is_err(),
            "not JSON"
        );
        assert!(serde_json::from_slice::<Value>(&payloads[0]).is_ok());
    }

    #[test]
    fn deterministic_and_pays_orders() {
        let mut a = Generator::new(7, 100);
        let mut b = Generator::new(7, 100);
        let mut paid = 0;
        for i in 0..2000 {
            let (x, y) = (
                a.next(1_700_000_000_000 + i * 50),
                b.next(1_700_000_000_000 + i * 50),
            );
            assert_eq!(x, y);
            if x.value["orderStatus"] == "paid" {
                paid += 1;
                assert!(x.value["payTime"].as_i64() >= x.value["createTime"].as_i64());
            }
        }
        assert!(paid > 50, "{paid}");
    }
}
