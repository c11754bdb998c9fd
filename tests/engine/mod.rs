mod carts_model;
mod concurrency;
mod late_commit;
mod model;
mod orders;
mod orders_model;
