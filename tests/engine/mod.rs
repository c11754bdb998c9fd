mod concurrency;
mod model;
mod orders;
