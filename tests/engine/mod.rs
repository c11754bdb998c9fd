mod concurrency;
mod model;
mod orders_model;
