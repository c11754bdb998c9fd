mod concurrency;
mod model;
