mod concurrency;
mod model;
mod orders;
mod orders_model;
